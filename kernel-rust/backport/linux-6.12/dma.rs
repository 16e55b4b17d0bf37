// SPDX-License-Identifier: GPL-2.0

//! Direct memory access (DMA): a backport to Linux 6.12 of 7.3's `kernel::dma::DataDirection`.
//!
//! C header: [`include/linux/dma-direction.h`](srctree/include/linux/dma-direction.h).
//!
//! Only the direction type: the rest of 7.3's `kernel::dma` (coherent allocations, masks of
//! bus devices) has no user in the rig. Same name, variants and conversion as upstream, so
//! code written against 7.3 compiles unchanged here.

use crate::bindings;

/// DMA data direction.
///
/// Corresponds to the C [`enum dma_data_direction`].
///
/// [`enum dma_data_direction`]: srctree/include/linux/dma-direction.h
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum DataDirection {
    /// The DMA mapping is for bidirectional data transfer.
    Bidirectional = bindings::dma_data_direction_DMA_BIDIRECTIONAL,
    /// The DMA mapping is for data transfer from memory to the device (write).
    ToDevice = bindings::dma_data_direction_DMA_TO_DEVICE,
    /// The DMA mapping is for data transfer from the device to memory (read).
    FromDevice = bindings::dma_data_direction_DMA_FROM_DEVICE,
    /// The DMA mapping is not for data transfer.
    None = bindings::dma_data_direction_DMA_NONE,
}

impl From<DataDirection> for bindings::dma_data_direction {
    /// Returns the raw representation of [`enum dma_data_direction`].
    ///
    /// [`enum dma_data_direction`]: srctree/include/linux/dma-direction.h
    fn from(direction: DataDirection) -> Self {
        direction as Self
    }
}
