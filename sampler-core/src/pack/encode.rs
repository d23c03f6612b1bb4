//! Writing a weights pack: f32, f16 or symmetric per-output-channel int8 (`w = scale_c * q`,
//! TFLite's int8 weight scheme), values 16-aligned for reading in place.

use alloc::string::String;
use alloc::vec::Vec;

use super::{PACK_ALIGN, PACK_MAGIC, PackError, WeightDtype, bad, f32_to_f16};

/// One tensor to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct PackTensor {
    /// burn's parameter path.
    pub name: String,
    /// Shape (rank 1 to 4).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// The axis of a weight's output channels in burn's layouts: 0 for convolutions
/// `[out, in, kh, kw]`, the last for Linear `[in, out]`.
pub(super) fn output_axis(shape: &[usize]) -> usize {
    if shape.len() == 2 { 1 } else { 0 }
}

/// Encodes `tensors` with matrices and convolution kernels stored as `dtype` (vectors stay
/// f32). Fails on a rank outside 1..=4 or a tensor too large for the format.
pub fn encode(tensors: &[PackTensor], dtype: WeightDtype) -> Result<Vec<u8>, PackError> {
    let u32_of = |v: usize| {
        u32::try_from(v).map_err(|_| PackError("a tensor exceeds the format's 4 GiB".into()))
    };
    let mut table: Vec<u8> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for t in tensors {
        let rank = t.shape.len();
        if !(1..=4).contains(&rank) || t.shape.iter().product::<usize>() != t.values.len() {
            return bad(alloc::format!(
                "tensor '{}' has shape {:?} for {} values",
                t.name,
                t.shape,
                t.values.len()
            ));
        }
        let dt = if rank == 1 { WeightDtype::F32 } else { dtype };
        let axis = output_axis(&t.shape);
        data.resize(data.len().next_multiple_of(PACK_ALIGN), 0);
        let offset = data.len();
        match dt {
            WeightDtype::F32 => t
                .values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            WeightDtype::F16 => t
                .values
                .iter()
                .for_each(|&v| data.extend_from_slice(&f32_to_f16(v).to_le_bytes())),
            WeightDtype::I8 => {
                let channels = t.shape[axis];
                let inner: usize = t.shape[axis + 1..].iter().product();
                let channel = |i: usize| (i / inner) % channels;
                let mut max = alloc::vec![0.0f32; channels];
                for (i, v) in t.values.iter().enumerate() {
                    max[channel(i)] = max[channel(i)].max(v.abs());
                }
                let scales: Vec<f32> = max.iter().map(|m| m / 127.0).collect();
                for (i, &v) in t.values.iter().enumerate() {
                    let s = scales[channel(i)];
                    let q = if s > 0.0 {
                        libm::roundf(v / s).clamp(-127.0, 127.0) as i8
                    } else {
                        0
                    };
                    data.push(q as u8);
                }
                data.resize(data.len().next_multiple_of(4), 0);
                scales
                    .iter()
                    .for_each(|s| data.extend_from_slice(&s.to_le_bytes()));
            }
        }
        let name_len = u16::try_from(t.name.len())
            .map_err(|_| PackError(alloc::format!("tensor name '{}' is too long", t.name)))?;
        table.push(dt.code());
        table.push(rank as u8);
        table.extend_from_slice(&name_len.to_le_bytes());
        table.extend_from_slice(t.name.as_bytes());
        table.resize(table.len().next_multiple_of(4), 0);
        for &d in &t.shape {
            table.extend_from_slice(&u32_of(d)?.to_le_bytes());
        }
        table.extend_from_slice(&u32_of(offset)?.to_le_bytes());
        table.extend_from_slice(&u32_of(axis)?.to_le_bytes());
    }
    let data_at = (12 + table.len()).next_multiple_of(PACK_ALIGN);
    let mut out = Vec::with_capacity(data_at + data.len());
    out.extend_from_slice(&PACK_MAGIC);
    out.extend_from_slice(&u32_of(tensors.len())?.to_le_bytes());
    out.extend_from_slice(&u32_of(data_at)?.to_le_bytes());
    out.extend_from_slice(&table);
    out.resize(data_at, 0);
    out.extend_from_slice(&data);
    Ok(out)
}
