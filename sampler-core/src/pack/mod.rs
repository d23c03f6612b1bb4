//! The weights pack: how a version-2 bundle stores its network's weights so that a
//! microcontroller reads them in place from flash (`crate::micro`), and the host loads
//! them into burn (`model::network_from_vec` converts them to a burnpack).
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"FWPK"
//! 4       4     tensor count n, u32 little-endian
//! 8       4     data section offset D (a multiple of 16), u32 little-endian
//! 12      ...   n table entries:
//!                 u8 dtype (0 f32, 1 f16, 2 int8), u8 rank (1..=4), u16 name length L,
//!                 L bytes of UTF-8 name, zero padding to a multiple of 4,
//!                 rank x u32 dims, u32 offset of the values from D (a multiple of 16),
//!                 u32 scale axis (int8: the axis of the per-channel f32 scales)
//! D       ...   data: each tensor's values little-endian; an int8 tensor's values are
//!               followed (at the next multiple of 4) by one f32 scale per channel of its
//!               scale axis
//! ```
//!
//! Names and shapes are burn's (`UNet.enc.0.conv0.weight`, Linear weights `[in, out]`), so
//! the host converts without a renaming table. int8 is symmetric per output channel
//! (`w = scale_c * q`, `q` in -127..=127), the scheme of TFLite's int8 weights; vectors
//! (biases, GroupNorm) always stay f32. Parsing untrusted bytes never panics: every offset
//! and length is checked against the pack before use.

use alloc::string::String;

/// The 4 bytes a weights pack starts with.
pub const PACK_MAGIC: [u8; 4] = *b"FWPK";
/// Alignment of the data section and of every tensor's values within it.
pub const PACK_ALIGN: usize = 16;
/// Most tensors a pack may declare (SongUNet at EDM's CIFAR-10 size has ~300).
pub const MAX_TENSORS: usize = 1 << 14;

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit IEEE floats.
    F32,
    /// 16-bit IEEE floats (round to nearest even); 2x smaller, ~3 decimal digits.
    F16,
    /// Symmetric int8 per output channel with f32 scales; ~4x smaller.
    I8,
}

impl WeightDtype {
    fn code(self) -> u8 {
        match self {
            WeightDtype::F32 => 0,
            WeightDtype::F16 => 1,
            WeightDtype::I8 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(WeightDtype::F32),
            1 => Some(WeightDtype::F16),
            2 => Some(WeightDtype::I8),
            _ => None,
        }
    }

    fn width(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 => 2,
            WeightDtype::I8 => 1,
        }
    }

    /// The name used on command lines (`f32`, `f16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::I8 => "int8",
        }
    }
}

impl core::str::FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "f16" => Ok(WeightDtype::F16),
            "int8" | "i8" => Ok(WeightDtype::I8),
            other => Err(alloc::format!(
                "unknown weight type '{other}': choose f32, f16 or int8"
            )),
        }
    }
}

/// Why bytes are not a usable weights pack.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the weights pack is malformed: {0}")]
pub struct PackError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, PackError> {
    Err(PackError(msg.into()))
}

mod encode;
mod half;
mod view;

pub use encode::{PackTensor, encode};
pub use half::{f16_to_f32, f32_to_f16};
pub use view::{Int8Columns, Int8Rows, PackView, TensorView, Weight};

#[cfg(test)]
mod tests;
