//! Reading a weights pack in place: the parser of untrusted bytes (every offset and length
//! checked before use) and the views the host loader and the micro runtime read from.

use alloc::vec::Vec;

use super::{MAX_TENSORS, PACK_ALIGN, PACK_MAGIC, PackError, WeightDtype, bad, f16_to_f32};

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

/// An int8 weight as rows of its scale axis (axis 0 of a convolution: a row per output
/// channel), for integer kernels that read the values as they are stored.
#[derive(Clone, Copy, Debug)]
pub struct Int8Rows<'a> {
    /// The int8 values (two's complement bytes), row after row.
    pub values: &'a [u8],
    scales: &'a [u8],
    /// Values per row.
    pub row_len: usize,
    /// Rows (channels of the scale axis).
    pub rows: usize,
}

impl Int8Rows<'_> {
    /// The values of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.values[r * self.row_len..(r + 1) * self.row_len]
    }

    /// The scale of row `r`: value `i` of the row is `row(r)[i] as i8 * scale(r)`.
    pub fn scale(&self, r: usize) -> f32 {
        scale_at(self.scales, r)
    }
}

/// An int8 weight whose scale axis is its last (a burn `Linear`'s `[inputs, outputs]`):
/// value `(i, o)` is `values[i columns + o] as i8 * scale(o)`.
#[derive(Clone, Copy, Debug)]
pub struct Int8Columns<'a> {
    /// The int8 values (two's complement bytes), row after row.
    pub values: &'a [u8],
    scales: &'a [u8],
    /// Values per row, each with its own scale.
    pub columns: usize,
}

impl Int8Columns<'_> {
    /// The scale of column `o`.
    pub fn scale(&self, o: usize) -> f32 {
        scale_at(self.scales, o)
    }
}

/// Scale `c` of a table of little-endian f32 scales.
fn scale_at(scales: &[u8], c: usize) -> f32 {
    let b = &scales[4 * c..4 * c + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl<'a> Weight<'a> {
    /// The values as int8 rows of the scale axis, when they are stored so and the rows are
    /// the leading axis (every row's values contiguous).
    pub fn int8_rows(&self) -> Option<Int8Rows<'a>> {
        let (row_len, rows) = (self.inner as usize, self.channels as usize);
        (self.dtype == WeightDtype::I8 && row_len * rows == self.values.len()).then_some(Int8Rows {
            values: self.values,
            scales: self.scales,
            row_len,
            rows,
        })
    }

    /// The values as int8 columns of the scale axis, when it is the last (every value of a
    /// row its own scale).
    pub fn int8_columns(&self) -> Option<Int8Columns<'a>> {
        let columns = self.channels as usize;
        (self.dtype == WeightDtype::I8 && self.inner == 1 && columns > 0).then_some(Int8Columns {
            values: self.values,
            scales: self.scales,
            columns,
        })
    }
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
}
