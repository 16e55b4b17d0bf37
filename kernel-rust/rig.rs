// SPDX-License-Identifier: GPL-2.0

//! The rig's own small debugfs and misc-device wrappers, used by its heap and test importer
//! on every kernel it builds.
//!
//! They are not the upstream `kernel::debugfs` and `kernel::miscdevice` (7.3 has both, with
//! other APIs; 6.12 has neither): keeping them here, under their own name, lets the heap and
//! the importer compile unchanged on 6.12 and 7.3.

pub mod compat;
#[cfg(CONFIG_DEBUG_FS)]
pub mod debugfs;
pub mod miscdevice;
