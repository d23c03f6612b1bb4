//! The micro runtime's memory: one caller-provided arena of `u32` words, split into an f32
//! scratch pool (accumulator bands, rows, the solver's state) and a pool of stored
//! activations (f32 or f16 bits), both bump allocators with stack discipline.
//!
//! A dry run walks the network with empty pools and only counts: that is how
//! [`MicroSampler::arena_words`](super::MicroSampler::arena_words) plans the arena with the
//! same code that then runs in it.

use crate::pack::{f16_to_f32, f32_to_f16};

/// An activation as stored: f32, or f16 bits.
pub(super) trait Store: Copy + Default + bytemuck::Pod {
    fn load(self) -> f32;
    fn save(v: f32) -> Self;
}

impl Store for f32 {
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn save(v: f32) -> Self {
        v
    }
}

impl Store for u16 {
    #[inline(always)]
    fn load(self) -> f32 {
        f16_to_f32(self)
    }
    #[inline(always)]
    fn save(v: f32) -> Self {
        f32_to_f16(v)
    }
}

/// A region of one of the arena's two pools.
#[derive(Clone, Copy, Debug)]
pub(super) struct Buf {
    pub(super) off: usize,
    pub(super) len: usize,
}

/// A bump allocator with stack discipline; in a dry run it only counts.
pub(super) struct Pool<'s, T> {
    pub(super) data: &'s mut [T],
    top: usize,
    pub(super) peak: usize,
}

impl<T> Pool<'_, T> {
    pub(super) fn alloc(&mut self, len: usize) -> Buf {
        let b = Buf { off: self.top, len };
        self.top += len;
        self.peak = self.peak.max(self.top);
        b
    }
    pub(super) fn mark(&self) -> usize {
        self.top
    }
    pub(super) fn release(&mut self, mark: usize) {
        self.top = mark;
    }
}

/// The arena of one run: f32 scratch (accumulator bands, rows, the sampler's state) and
/// stored activations.
pub(super) struct Ctx<'s, S> {
    pub(super) f: Pool<'s, f32>,
    pub(super) s: Pool<'s, S>,
    pub(super) dry: bool,
}

impl<'s, S: Store> Ctx<'s, S> {
    /// Empty pools over `f` and `s`; `dry`: count only (`f` and `s` empty).
    pub(super) fn new(f: &'s mut [f32], s: &'s mut [S], dry: bool) -> Self {
        Ctx {
            f: Pool {
                data: f,
                top: 0,
                peak: 0,
            },
            s: Pool {
                data: s,
                top: 0,
                peak: 0,
            },
            dry,
        }
    }

    pub(super) fn fs(&mut self, b: Buf) -> &mut [f32] {
        &mut self.f.data[b.off..b.off + b.len]
    }
}

/// Disjoint mutable views of live buffers of one pool (the bump allocator never hands out
/// overlapping live buffers), returned in the order asked.
pub(super) fn disjoint<'d, T, const N: usize>(
    data: &'d mut [T],
    bufs: [Buf; N],
) -> [&'d mut [T]; N] {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| bufs[i].off);
    let mut out: [&'d mut [T]; N] = core::array::from_fn(|_| Default::default());
    let mut rest = data;
    let mut base = 0;
    for &i in &order {
        let b = bufs[i];
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(b.off - base);
        let (mine, tail) = tail.split_at_mut(b.len);
        out[i] = mine;
        rest = tail;
        base = b.off + b.len;
    }
    out
}

/// Read access to the stored activations while one region (`gap`) is being written.
pub(super) struct View<'v, S> {
    below: &'v [S],
    above: &'v [S],
    gap_end: usize,
}

impl<'v, S: Store> View<'v, S> {
    /// All of `data`, nothing being written.
    pub(super) fn whole(data: &'v [S]) -> Self {
        View {
            below: data,
            above: &[],
            gap_end: usize::MAX,
        }
    }

    /// `data` but `gap`, and `gap` itself to write.
    pub(super) fn around(data: &'v mut [S], gap: Buf) -> (Self, &'v mut [S]) {
        let (below, rest) = data.split_at_mut(gap.off);
        let (mid, above) = rest.split_at_mut(gap.len);
        (
            View {
                below,
                above,
                gap_end: gap.off + gap.len,
            },
            mid,
        )
    }

    #[inline(always)]
    pub(super) fn get(&self, i: usize) -> S {
        if i < self.below.len() {
            self.below[i]
        } else {
            self.above[i - self.gap_end]
        }
    }
}
