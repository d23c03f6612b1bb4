//! The bundle: everything a device needs to sample, in one checked file.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"FEWSTEP\0"
//! 8       2     format version, u16 little-endian (this code reads and writes 1)
//! 10      2     reserved, zero
//! 12      4     body length N, u32 little-endian
//! 16      N     body: postcard encoding of [`Bundle`]
//! 16+N    4     CRC-32 (IEEE) of bytes 0 .. 16+N, u32 little-endian
//! ```
//!
//! Decoding untrusted bytes never panics: the header is checked against the input length
//! before anything is allocated, the checksum before the body is parsed, and postcard
//! (through serde's cautious size hints) never pre-allocates more than the input holds.
//! Every failure is a [`BundleError`] that says what is wrong and what to do.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::gmm::Mixture;
use crate::model::NetConfig;
use crate::precond::Precond;
use crate::schedule::Schedule;

/// The 8 bytes every bundle starts with.
pub const MAGIC: [u8; 8] = *b"FEWSTEP\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 16;
const CRC_LEN: usize = 4;
/// Largest image this format accepts, in values per image (C*H*W): guards the sampler's
/// allocations against absurd shapes in hand-made files.
pub const MAX_IMAGE_VALUES: u64 = 1 << 24;

/// Largest noise level a bundle may hold (EDM uses 80, VE checkpoints 100-500; far beyond,
/// `s_max * eps` and the preconditioning overflow f32).
pub const MAX_SIGMA: f32 = 1e5;

/// Why bytes are not a usable bundle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with the bundle magic.
    #[error(
        "not a fewstep bundle (the file does not start with the FEWSTEP magic); check the path"
    )]
    WrongMagic,
    /// A newer (or unknown) format.
    #[error(
        "bundle format version {found} is not supported (this build reads version {FORMAT_VERSION}); update fewstep or re-export the bundle"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
    },
    /// The file ends before the header says it should.
    #[error(
        "bundle is truncated: expected {expected} bytes, found {found}; the file was cut short, copy it again"
    )]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Length present.
        found: u64,
    },
    /// Bytes after the checksum.
    #[error(
        "bundle has {0} unexpected bytes after its end; the file is corrupted or two files were joined"
    )]
    TrailingBytes(u64),
    /// The checksum does not match.
    #[error(
        "bundle checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the file is corrupted, copy or export it again"
    )]
    ChecksumMismatch {
        /// CRC in the file.
        stored: u32,
        /// CRC of the content.
        computed: u32,
    },
    /// The body does not parse although the checksum matched (written by another tool?).
    #[error("bundle body is malformed: {0}")]
    Malformed(String),
    /// The body parses but its parts disagree.
    #[error("bundle is inconsistent: {0}")]
    Inconsistent(String),
}

/// Shape of one image, channels first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Channels (1 grayscale, 3 RGB).
    pub channels: u32,
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
}

impl ImageShape {
    /// C*H*W.
    pub fn values(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize
    }
}

/// The sampler a bundle is meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolverKind {
    /// First-order Euler over the bundle's levels (docs/method.md §2).
    Euler,
}

/// The denoiser of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    /// A network: its config and its weights as burnpack bytes.
    Network {
        /// Architecture.
        config: NetConfig,
        /// Weights, burnpack-encoded.
        weights: Vec<u8>,
    },
    /// An analytic Gaussian mixture (its exact denoiser).
    Mixture(Mixture),
}

/// Where a bundle came from.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// Data set the model was trained on.
    pub dataset: String,
    /// Optimizer steps of the model (pre-training + fine-tuning).
    pub training_steps: u64,
    /// How the levels were chosen (e.g. `edm-rho7`, `two-stage teacher/exact`).
    pub schedule_method: String,
    /// Seconds since the Unix epoch at export (0 if unknown).
    pub created_unix: u64,
}

/// A decoded bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// Short name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Shape of one image.
    pub image: ImageShape,
    /// Number of class labels (0: unconditional).
    pub label_count: u32,
    /// Preconditioning (EDM with its `sigma_data`, VP or VE).
    pub precond: Precond,
    /// The T noise levels.
    pub schedule: Schedule,
    /// The sampler to run.
    pub solver: SolverKind,
    /// The denoiser.
    pub model: ModelSpec,
    /// Provenance.
    pub provenance: Provenance,
}

/// [`Bundle`] as it is on the wire, with the levels not yet validated: postcard drops the
/// message of a validation error raised inside serde ("Serde Deserialization Error"), so
/// [`Bundle::from_bytes`] decodes this and validates afterwards, keeping the reason. The
/// field order and types are [`Bundle`]'s (a [`Schedule`] is encoded as its levels).
#[derive(Deserialize)]
struct BundleWire {
    name: String,
    description: String,
    image: ImageShape,
    label_count: u32,
    precond: Precond,
    schedule: Vec<f32>,
    solver: SolverKind,
    model: ModelSpec,
    provenance: Provenance,
}

impl TryFrom<BundleWire> for Bundle {
    type Error = BundleError;

    fn try_from(w: BundleWire) -> Result<Self, BundleError> {
        let schedule =
            Schedule::new(w.schedule).map_err(|e| BundleError::Inconsistent(e.to_string()))?;
        Ok(Bundle {
            name: w.name,
            description: w.description,
            image: w.image,
            label_count: w.label_count,
            precond: w.precond,
            schedule,
            solver: w.solver,
            model: w.model,
            provenance: w.provenance,
        })
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

impl Bundle {
    /// Checks that the parts agree: image shape vs. model, labels, mixture sizes.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Inconsistent(m));
        let im = self.image;
        let values = im.channels as u64 * im.height as u64 * im.width as u64;
        if values == 0 || values > MAX_IMAGE_VALUES {
            return bad(alloc::format!(
                "image shape {}x{}x{} is empty or larger than {MAX_IMAGE_VALUES} values",
                im.channels,
                im.height,
                im.width
            ));
        }
        match &self.model {
            ModelSpec::Network { config, .. } => {
                if let Err(e) = config.validate() {
                    return bad(alloc::format!("network config: {e}"));
                }
                if config.dim() as u64 != values {
                    return bad(alloc::format!(
                        "network works on {} values per sample but the image is {}x{}x{}",
                        config.dim(),
                        im.channels,
                        im.height,
                        im.width
                    ));
                }
                if let NetConfig::UNet(u) = config
                    && (u.img_resolution as u32 != im.height
                        || im.height != im.width
                        || u.in_channels as u32 != im.channels
                        || u.out_channels != u.in_channels)
                {
                    return bad(
                        "U-Net resolution or channels differ from the image shape".to_string()
                    );
                }
                if config.label_dim() as u32 != self.label_count {
                    return bad(alloc::format!(
                        "network has {} label inputs but the bundle declares {} labels",
                        config.label_dim(),
                        self.label_count
                    ));
                }
            }
            ModelSpec::Mixture(m) => {
                if let Err(e) = m.validate() {
                    return bad(alloc::format!("mixture: {e}"));
                }
                if m.dim as u64 != values {
                    return bad(alloc::format!(
                        "mixture dimension {} differs from the image's {values} values",
                        m.dim
                    ));
                }
                if self.label_count != 0 {
                    return bad("a mixture bundle cannot be class-conditional".to_string());
                }
            }
        }
        // Ranges wide enough for every published EDM/VP/VE setting; beyond them f32
        // arithmetic overflows into NaN images.
        match self.precond {
            Precond::Edm { sigma_data } if !(sigma_data > 0.0 && sigma_data <= 100.0) => {
                return bad(alloc::format!(
                    "sigma_data must be in (0, 100], got {sigma_data}"
                ));
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } if !(beta_d > 0.0
                && beta_d <= 1e3
                && (0.0..=1e2).contains(&beta_min)
                && m > 0.0
                && m <= 1e6) =>
            {
                return bad(alloc::format!(
                    "VP preconditioning needs beta_d in (0, 1000], beta_min in [0, 100] and M \
                     in (0, 1e6], got beta_d {beta_d}, beta_min {beta_min}, M {m}"
                ));
            }
            _ => {}
        }
        let s_max = self.schedule.s_max();
        if s_max > MAX_SIGMA {
            return bad(alloc::format!(
                "the largest noise level is {s_max}; fewstep samples levels up to {MAX_SIGMA}"
            ));
        }
        Ok(())
    }

    /// An upper estimate of the bytes sampling `batch` images at once needs, computed from
    /// the config before anything is allocated: the weights twice (the bundle's bytes while
    /// they are loaded) plus `batch` times one image's activations. Call after
    /// [`Bundle::validate`] (which [`Bundle::from_bytes`] runs).
    pub fn memory_bytes(&self, batch: usize) -> u64 {
        let (fixed, per_image) = match &self.model {
            ModelSpec::Network { config, weights } => {
                (2 * weights.len() as u64, config.activation_bytes())
            }
            ModelSpec::Mixture(m) => {
                let (k, d) = (m.components() as u64, m.dim as u64);
                (3 * 4 * k * d, 2 * 4 * (4 * d + 4 * k))
            }
        };
        fixed.saturating_add((batch as u64).saturating_mul(per_image))
    }

    /// Encodes to the file format. Fails only if the bundle is inconsistent.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        self.validate()?;
        let body =
            postcard::to_allocvec(self).map_err(|e| BundleError::Malformed(e.to_string()))?;
        let len = u32::try_from(body.len())
            .map_err(|_| BundleError::Inconsistent("bundle body exceeds 4 GiB".to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes and validates untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        // 1. Header, checked against what is actually there.
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(BundleError::WrongMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::Truncated {
                expected: (HEADER_LEN + CRC_LEN) as u64,
                found: bytes.len() as u64,
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion { found: version });
        }
        if bytes[10] != 0 || bytes[11] != 0 {
            return Err(BundleError::Malformed(
                "reserved header bytes are not zero".to_string(),
            ));
        }
        let body_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as u64;
        let expected = HEADER_LEN as u64 + body_len + CRC_LEN as u64;
        let found = bytes.len() as u64;
        if found < expected {
            return Err(BundleError::Truncated { expected, found });
        }
        if found > expected {
            return Err(BundleError::TrailingBytes(found - expected));
        }
        // 2. Checksum before parsing anything of the body.
        let end = HEADER_LEN + body_len as usize;
        let stored =
            u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        let computed = crc32(&bytes[..end]);
        if stored != computed {
            return Err(BundleError::ChecksumMismatch { stored, computed });
        }
        // 3. Body, then consistency.
        let (wire, rest): (BundleWire, &[u8]) = postcard::take_from_bytes(&bytes[HEADER_LEN..end])
            .map_err(|e| BundleError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed(alloc::format!(
                "{} unread bytes in the body",
                rest.len()
            )));
        }
        let bundle = Bundle::try_from(wire)?;
        bundle.validate()?;
        Ok(bundle)
    }
}
