// SPDX-License-Identifier: GPL-2.0

//! What the rig's heap and test importer need that is neither upstream nor a backport: the
//! few API spellings that differ between the kernels it builds.

pub mod compat;
