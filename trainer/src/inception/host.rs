//! The host executor of Inception-v3 (see the parent module): pytorch-fid's input
//! transform, then the [`Architecture`](super::Architecture)'s blocks one image at a time, each image on its own
//! thread, through the CPU kernels of `sampler_core::cpu::inception`.

use indicatif::ProgressBar;
use rayon::prelude::*;
use sampler_core::cpu::inception::{self as fk, ConvShape};

use super::{FoldedConv, Inception, InceptionError, Op, SIDE};

impl FoldedConv {
    fn shape(&self, (h, w): (usize, usize)) -> ConvShape {
        let [cout, cin, kh, kw] = self.dims;
        ConvShape {
            cin,
            h,
            w,
            cout,
            kernel: (kh, kw),
            stride: (self.stride, self.stride),
            pad: self.pad,
        }
    }
}

/// An activation of one image: `[c, h, w]` values.
#[derive(Clone, Debug)]
struct Act {
    data: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

impl Inception {
    fn conv(&self, i: usize, x: &Act) -> Act {
        let conv = &self.convs[i];
        let s = conv.shape((x.h, x.w));
        let (oh, ow) = (s.oh(), s.ow());
        let mut data = vec![0.0; s.cout * oh * ow];
        fk::conv_bias_relu(&s, &x.data, &conv.weight, &conv.bias, &mut data);
        Act {
            data,
            c: s.cout,
            h: oh,
            w: ow,
        }
    }

    fn apply(&self, op: Op, x: &Act) -> Act {
        match op {
            Op::Conv(i) => self.conv(i, x),
            Op::MaxPool { stride, pad } => Act {
                data: fk::max_pool3(&x.data, (x.c, x.h, x.w), stride, pad),
                c: x.c,
                h: fk::pool3_len(x.h, stride, pad),
                w: fk::pool3_len(x.w, stride, pad),
            },
            Op::AvgPool => Act {
                data: fk::avg_pool3_same(&x.data, (x.c, x.h, x.w)),
                ..*x
            },
        }
    }

    /// Features of one prepared image (`[3, h, w]` in [-1, 1]).
    fn forward_one(&self, x: Act) -> Vec<f32> {
        let mut x = x;
        for block in &self.arch.blocks {
            let mut inter: [Option<Act>; 2] = [None, None];
            let mut cat = Act {
                data: vec![],
                c: 0,
                h: 0,
                w: 0,
            };
            for br in block {
                let src = match br.from {
                    Some(i) => inter[i].as_ref().unwrap_or(&x),
                    None => &x,
                };
                let mut y: Option<Act> = None;
                for &op in &br.ops {
                    y = Some(self.apply(op, y.as_ref().unwrap_or(src)));
                }
                let y = y.unwrap_or_else(|| src.clone());
                match br.to {
                    Some(i) => inter[i] = Some(y),
                    None => {
                        cat.data.extend_from_slice(&y.data);
                        (cat.c, cat.h, cat.w) = (cat.c + y.c, y.h, y.w);
                    }
                }
            }
            x = cat;
        }
        fk::channel_means(&x.data, x.h * x.w)
    }

    /// The 2048-d features of `images` (`n` images of `[c, h, w]`, values in [0, 1], `c` 1
    /// or 3), `n * 2048` values, images spread over the threads; `bar` advances per image.
    pub fn features(
        &self,
        images: &[f32],
        (c, h, w): (usize, usize, usize),
        bar: &ProgressBar,
    ) -> Result<Vec<f32>, InceptionError> {
        if c != 1 && c != 3 {
            return Err(InceptionError::Channels(c));
        }
        let dim = (c * h * w).max(1);
        let rows: Vec<Vec<f32>> = images
            .par_chunks(dim)
            .map(|img| {
                let f = self.forward_one(prepare(img, (c, h, w), (SIDE, SIDE)));
                bar.inc(1);
                f
            })
            .collect();
        Ok(rows.concat())
    }

    /// Features of images already prepared (`[3, h, w]` in [-1, 1], `h`, `w` >= 75), on the
    /// host: what [`InceptionV3::forward`](super::InceptionV3::forward) computes.
    pub fn features_prepared(&self, images: &[f32], (h, w): (usize, usize)) -> Vec<f32> {
        images
            .par_chunks((3 * h * w).max(1))
            .map(|img| {
                self.forward_one(Act {
                    data: img.to_vec(),
                    c: 3,
                    h,
                    w,
                })
            })
            .collect::<Vec<_>>()
            .concat()
    }
}

/// pytorch-fid's input transform of one image `[c, h, w]` in [0, 1]: bilinear resize to
/// `size` (align_corners=False), then `2x - 1`, gray repeated to three channels.
fn prepare(img: &[f32], (c, h, w): (usize, usize, usize), size: (usize, usize)) -> Act {
    let resized = if (h, w) == size {
        img.to_vec()
    } else {
        fk::resize_bilinear(img, (c, h, w), size)
    };
    let plane = size.0 * size.1;
    let scaled = resized.iter().map(|&v| 2.0 * v - 1.0);
    let data: Vec<f32> = if c == 1 {
        let g: Vec<f32> = scaled.collect();
        [g.as_slice(), &g, &g].concat()
    } else {
        scaled.collect()
    };
    debug_assert_eq!(data.len(), 3 * plane);
    Act {
        data,
        c: 3,
        h: size.0,
        w: size.1,
    }
}
