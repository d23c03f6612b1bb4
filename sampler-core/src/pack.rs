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
use alloc::vec::Vec;

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

/// One tensor of a pack, viewed in place.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// burn's parameter path.
    pub name: &'a str,
    /// How the values are stored.
    pub dtype: WeightDtype,
    dims: [usize; 4],
    rank: usize,
    values: &'a [u8],
    /// int8: one f32 per channel of `scale_axis`.
    scales: &'a [u8],
    scale_axis: usize,
}

impl<'a> TensorView<'a> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.dims[..self.rank].iter().product()
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the values as stored (scales excluded).
    pub fn stored_bytes(&self) -> usize {
        self.values.len() + self.scales.len()
    }

    /// The values without name and shape.
    pub fn weight(&self) -> Weight<'a> {
        // Parse checked the scale axis (int8 only) and that its channels fit a u16.
        let (inner, channels) = match self.dtype {
            WeightDtype::I8 => (
                self.dims[self.scale_axis + 1..self.rank]
                    .iter()
                    .product::<usize>() as u32,
                self.dims[self.scale_axis] as u16,
            ),
            _ => (1, 1),
        };
        Weight {
            values: self.values,
            scales: self.scales,
            inner,
            channels,
            dtype: self.dtype,
        }
    }

    /// Decodes values `start .. start + out.len()` (row-major) into `out` as f32.
    ///
    /// # Panics
    /// If the range is outside the tensor.
    pub fn read(&self, start: usize, out: &mut [f32]) {
        self.weight().read(start, out)
    }

    /// All values as f32.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut v = alloc::vec![0.0; self.len()];
        self.read(0, &mut v);
        v
    }
}

/// A tensor's values without its name and shape (24 bytes on a 32-bit target): what the
/// micro runtime keeps per parameter once the shapes have been checked.
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    values: &'a [u8],
    scales: &'a [u8],
    /// int8: values per channel step (the product of the dims after the scale axis).
    inner: u32,
    /// int8: channels of the scale axis.
    channels: u16,
    dtype: WeightDtype,
}

impl Weight<'_> {
    /// Decodes values `start .. start + out.len()` (row-major) into `out` as f32.
    ///
    /// # Panics
    /// If the range is outside the tensor (a caller bug, never bundle data: shapes are
    /// checked against the config before any read).
    #[inline]
    pub fn read(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self.dtype {
            WeightDtype::F32 => {
                let src = &self.values[4 * start..4 * (start + n)];
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            WeightDtype::F16 => {
                let src = &self.values[2 * start..2 * (start + n)];
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            WeightDtype::I8 => {
                let (inner, channels) = (self.inner as usize, self.channels as usize);
                let src = &self.values[start..start + n];
                for (k, (o, &q)) in out.iter_mut().zip(src).enumerate() {
                    let c = ((start + k) / inner) % channels;
                    let b = &self.scales[4 * c..4 * c + 4];
                    *o = q as i8 as f32 * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
}

/// A parsed pack: its tensor table, the values left in place.
#[derive(Clone, Debug)]
pub struct PackView<'a> {
    tensors: Vec<TensorView<'a>>,
}

/// A little-endian cursor over the table that fails instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| PackError("the tensor table runs past the end of the pack".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PackError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PackError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PackError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn align4(&mut self) -> Result<(), PackError> {
        let pad = (4 - self.at % 4) % 4;
        self.take(pad).map(|_| ())
    }
}

impl<'a> PackView<'a> {
    /// Parses and checks a pack: the table, every tensor's bytes inside the data section,
    /// unique names, and no NaN or infinite value or scale.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PackError> {
        if bytes.len() < 12 || bytes[..4] != PACK_MAGIC {
            return bad("it does not start with the FWPK magic");
        }
        let mut cur = Cursor { bytes, at: 4 };
        let count = cur.u32()? as usize;
        let data_at = cur.u32()? as usize;
        if count > MAX_TENSORS {
            return bad(alloc::format!(
                "it declares {count} tensors (at most {MAX_TENSORS})"
            ));
        }
        if data_at > bytes.len() || !data_at.is_multiple_of(PACK_ALIGN) {
            return bad("its data section offset is outside the pack or unaligned");
        }
        let data = &bytes[data_at..];
        // Sized once (a table entry takes at least 16 bytes, so a hostile count cannot
        // reserve more than the pack's size): on a microcontroller a doubling Vec would
        // hold up to twice the table.
        let mut tensors: Vec<TensorView<'a>> = Vec::with_capacity(count.min(bytes.len() / 16));
        for _ in 0..count {
            let code = cur.u8()?;
            let dtype = WeightDtype::from_code(code)
                .ok_or_else(|| PackError(alloc::format!("unknown dtype code {code}")))?;
            let rank = cur.u8()? as usize;
            let name_len = cur.u16()? as usize;
            let name = core::str::from_utf8(cur.take(name_len)?)
                .map_err(|_| PackError("a tensor name is not UTF-8".into()))?;
            cur.align4()?;
            if !(1..=4).contains(&rank) {
                return bad(alloc::format!("tensor '{name}' has rank {rank} (1 to 4)"));
            }
            let mut dims = [1usize; 4];
            for d in dims.iter_mut().take(rank) {
                *d = cur.u32()? as usize;
            }
            let offset = cur.u32()? as usize;
            let scale_axis = cur.u32()? as usize;
            if cur.at > data_at {
                return bad("the tensor table overlaps the data section");
            }
            let len = dims[..rank]
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= bytes.len())
                .ok_or_else(|| {
                    PackError(alloc::format!("tensor '{name}' is larger than the pack"))
                })?;
            let values_len = len.saturating_mul(dtype.width());
            let (scales_at, scales_len) = if dtype == WeightDtype::I8 {
                if scale_axis >= rank || dims[scale_axis] > u16::MAX as usize {
                    return bad(alloc::format!(
                        "tensor '{name}' scales along axis {scale_axis} of {rank} (at most \
                         65535 channels)"
                    ));
                }
                let end = (offset as u64 + values_len as u64).next_multiple_of(4);
                (
                    end.min(usize::MAX as u64) as usize,
                    dims[scale_axis].saturating_mul(4),
                )
            } else {
                let end = offset as u64 + values_len as u64;
                (end.min(usize::MAX as u64) as usize, 0)
            };
            if !offset.is_multiple_of(PACK_ALIGN)
                || (scales_at as u64) + (scales_len as u64) > data.len() as u64
            {
                return bad(alloc::format!(
                    "tensor '{name}' lies outside the data section or is unaligned"
                ));
            }
            let t = TensorView {
                name,
                dtype,
                dims,
                rank,
                values: &data[offset..offset + values_len],
                scales: &data[scales_at..scales_at + scales_len],
                scale_axis,
            };
            if tensors.iter().any(|o| o.name == name) {
                return bad(alloc::format!("tensor '{name}' appears twice"));
            }
            let finite = match dtype {
                WeightDtype::F32 => t
                    .values
                    .chunks_exact(4)
                    .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
                WeightDtype::F16 => t
                    .values
                    .chunks_exact(2)
                    .all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 != 0x7C00),
                WeightDtype::I8 => t
                    .scales
                    .chunks_exact(4)
                    .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            };
            if !finite {
                return bad(alloc::format!(
                    "tensor '{name}' holds NaN or infinite values"
                ));
            }
            tensors.push(t);
        }
        Ok(PackView { tensors })
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorView<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorView<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total stored bytes of the values and scales.
    pub fn stored_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.stored_bytes()).sum()
    }

    /// Checks the pack holds exactly the parameters of `config` (name and shape), in any
    /// order: what `crate::micro` and the host loader require before reading anything.
    /// The error lists the first missing, extra or misshapen tensors.
    pub fn check_against(&self, config: &crate::model::NetConfig) -> Result<(), PackError> {
        let mut problems: Vec<String> = Vec::new();
        let mut expected = 0usize;
        config.visit_parameters(&mut |name, shape| {
            expected += 1;
            let problem = match self.get(name) {
                None => alloc::format!("'{name}' is missing"),
                Some(t) if t.shape() != shape => alloc::format!(
                    "'{name}' has shape {:?}, the config needs {shape:?}",
                    t.shape()
                ),
                Some(_) => return,
            };
            if problems.len() < 8 {
                problems.push(problem);
            }
        });
        // Names are unique (checked by parse): with every expected one present, any
        // surplus is a tensor the network does not have.
        if problems.is_empty() && self.tensors.len() > expected {
            let mut seen = Vec::new();
            config.visit_parameters(&mut |name, _| seen.push(String::from(name)));
            for t in &self.tensors {
                if !seen.iter().any(|n| n == t.name) && problems.len() < 8 {
                    problems.push(alloc::format!(
                        "'{}' is not a parameter of this network",
                        t.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bad(alloc::format!(
                "the weights do not match the network config: {}",
                problems.join("; ")
            ))
        }
    }
}

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
fn output_axis(shape: &[usize]) -> usize {
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

/// IEEE half -> single, exact (subnormals included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value m * 2^-24; normalise.
            let shift = m.leading_zeros() - 21; // bring the top set bit to bit 10
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// IEEE single -> half, rounding to nearest even; overflow to infinity.
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let mant = x & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: shift the full mantissa (with its implicit bit) into place.
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && r & 1 == 1) {
        r += 1; // may carry into the exponent: still correct, up to infinity
    }
    sign | r as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_half_and_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f32_to_f16(f) & 0x7c00 == 0x7c00 && f32_to_f16(f) & 0x3ff != 0);
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "{h:#06x} -> {f}");
        }
        // Known values, independently: 1/3 rounds to 0x3555; 65520 overflows; 2^-25 ties
        // to even (zero), 3 * 2^-25 rounds up to 2^-23.
        assert_eq!(f32_to_f16(1.0 / 3.0), 0x3555);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0);
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        // Halfway between 1 and the next half (1 + 2^-10): ties to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    fn sample() -> Vec<PackTensor> {
        let vals = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect();
        alloc::vec![
            PackTensor {
                name: "a.weight".into(),
                shape: alloc::vec![3, 2, 3, 3],
                values: vals(54, 0.37),
            },
            PackTensor {
                name: "a.bias".into(),
                shape: alloc::vec![3],
                values: vals(3, 1.1),
            },
            PackTensor {
                name: "lin.weight".into(),
                shape: alloc::vec![5, 4],
                values: vals(20, 0.9),
            },
        ]
    }

    #[test]
    fn each_dtype_round_trips_within_its_precision() {
        let tensors = sample();
        for (dtype, tol) in [
            (WeightDtype::F32, 0.0f32),
            (WeightDtype::F16, 1.0 / 2048.0),
            (WeightDtype::I8, 0.5 / 127.0),
        ] {
            let bytes = encode(&tensors, dtype).unwrap();
            let pack = PackView::parse(&bytes).unwrap();
            assert_eq!(pack.tensors().len(), 3);
            for t in &tensors {
                let v = pack.get(&t.name).unwrap();
                assert_eq!(v.shape(), t.shape.as_slice());
                let expect_dtype = if t.shape.len() == 1 {
                    WeightDtype::F32
                } else {
                    dtype
                };
                assert_eq!(v.dtype, expect_dtype);
                // int8: error <= half a step of the channel's own scale (max |w| / 127).
                let got = v.to_vec();
                for (i, (&g, &w)) in got.iter().zip(&t.values).enumerate() {
                    let bound = match v.dtype {
                        WeightDtype::I8 => {
                            let axis = output_axis(&t.shape);
                            let inner: usize = t.shape[axis + 1..].iter().product();
                            let c = (i / inner) % t.shape[axis];
                            let max = t
                                .values
                                .iter()
                                .enumerate()
                                .filter(|(j, _)| (j / inner) % t.shape[axis] == c)
                                .fold(0.0f32, |m, (_, v)| m.max(v.abs()));
                            max * tol * 1.0001
                        }
                        _ => tol * w.abs().max(2f32.powi(-14)),
                    };
                    assert!(
                        (g - w).abs() <= bound,
                        "{dtype:?} {} [{i}]: {g} vs {w}",
                        t.name
                    );
                }
                // A sub-range reads the same values.
                let mut part = alloc::vec![0.0; got.len() - 1];
                v.read(1, &mut part);
                assert_eq!(part.as_slice(), &got[1..]);
            }
        }
    }

    /// int8 scales per output channel: axis 0 of a convolution `[out, in, kh, kw]`, the last
    /// axis of a Linear `[in, out]`. Output channels whose ranges differ by 10^3 steps keep
    /// each its own relative precision (half a step of max |w| / 127 of that channel,
    /// computed here in f64 from the layouts, not from the encoder's axis function); scaled
    /// along any other axis, the small channels would round to zero.
    #[test]
    fn int8_scales_along_the_output_channels() {
        let (o, i) = (3usize, 4usize);
        let magnitude = |c: usize| 1000f64.powi(c as i32) * 1e-3; // 1e-3, 1, 1e3
        let value =
            |c: usize, k: usize| magnitude(c) * (0.3 + 0.7 * ((k * 7 + 3) % 11) as f64 / 10.0);
        // conv [o, i, 2, 2]: element (c, rest) at c * 16 + rest.
        let conv: Vec<f32> = (0..o * i * 4)
            .map(|e| value(e / 16, e % 16) as f32)
            .collect();
        // linear [i, o]: element (row, c) at row * o + c.
        let linear: Vec<f32> = (0..i * o).map(|e| value(e % o, e / o) as f32).collect();
        let tensors = alloc::vec![
            PackTensor {
                name: "conv".into(),
                shape: alloc::vec![o, i, 2, 2],
                values: conv
            },
            PackTensor {
                name: "lin".into(),
                shape: alloc::vec![i, o],
                values: linear
            },
        ];
        let bytes = encode(&tensors, WeightDtype::I8).unwrap();
        let pack = PackView::parse(&bytes).unwrap();
        for (t, channel_of) in tensors.iter().zip([
            &(|e: usize| e / 16) as &dyn Fn(usize) -> usize,
            &(|e: usize| e % o) as &dyn Fn(usize) -> usize,
        ]) {
            let got = pack.get(&t.name).unwrap().to_vec();
            let mut max = [0.0f64; 3];
            for (e, &w) in t.values.iter().enumerate() {
                max[channel_of(e)] = max[channel_of(e)].max((w as f64).abs());
            }
            for (e, (&g, &w)) in got.iter().zip(&t.values).enumerate() {
                let half_step = max[channel_of(e)] / 127.0 / 2.0;
                let err = (g as f64 - w as f64).abs();
                assert!(
                    err <= half_step * 1.0001,
                    "{} [{e}] (channel {}): {g} vs {w}, error {err:e} > half a step {half_step:e}",
                    t.name,
                    channel_of(e)
                );
            }
        }
    }

    #[test]
    fn int8_is_smaller_and_check_against_lists_the_problems() {
        let tensors = sample();
        let f32_len = encode(&tensors, WeightDtype::F32).unwrap().len();
        let i8_len = encode(&tensors, WeightDtype::I8).unwrap().len();
        assert!(i8_len < f32_len, "{i8_len} vs {f32_len}");
        // A real network's parameters, one misshapen, one missing, one extra.
        let config = crate::model::NetConfig::Mlp(
            crate::model::MlpConfig::new(3)
                .with_hidden(4)
                .with_depth(1)
                .with_noise_channels(4),
        );
        let mut params: Vec<PackTensor> = config
            .parameters()
            .into_iter()
            .map(|(name, shape)| PackTensor {
                values: alloc::vec![0.5; shape.iter().product()],
                name,
                shape,
            })
            .collect();
        let good = encode(&params, WeightDtype::I8).unwrap();
        PackView::parse(&good)
            .unwrap()
            .check_against(&config)
            .unwrap();
        params[0].shape = alloc::vec![2, 8];
        params.pop();
        params.push(PackTensor {
            name: "Mlp.extra.weight".into(),
            shape: alloc::vec![1],
            values: alloc::vec![0.0],
        });
        let bytes = encode(&params, WeightDtype::F32).unwrap();
        let err = PackView::parse(&bytes)
            .unwrap()
            .check_against(&config)
            .unwrap_err()
            .0;
        assert!(
            err.contains("'Mlp.map_layer0.weight' has shape [2, 8]"),
            "{err}"
        );
        assert!(err.contains("'Mlp.output.bias' is missing"), "{err}");
        // With every parameter present, a surplus tensor is named.
        params[0].shape = alloc::vec![4, 4];
        params.pop();
        params.push(PackTensor {
            name: "Mlp.output.bias".into(),
            shape: alloc::vec![3],
            values: alloc::vec![0.0; 3],
        });
        params.push(PackTensor {
            name: "Mlp.extra.weight".into(),
            shape: alloc::vec![1],
            values: alloc::vec![0.0],
        });
        let bytes = encode(&params, WeightDtype::F32).unwrap();
        let err = PackView::parse(&bytes)
            .unwrap()
            .check_against(&config)
            .unwrap_err()
            .0;
        assert!(
            err.contains("'Mlp.extra.weight' is not a parameter"),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_and_single_byte_edit_is_an_error_or_a_valid_pack() {
        let bytes = encode(&sample(), WeightDtype::I8).unwrap();
        // Cut anywhere, the table or the data runs out.
        for n in 0..bytes.len() {
            assert!(PackView::parse(&bytes[..n]).is_err(), "{n}");
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(p) = PackView::parse(&b) {
                    // Whatever parses can be read in full without a panic.
                    for t in p.tensors() {
                        let _ = t.to_vec();
                    }
                }
            }
        }
    }
}
