//! The bundle: everything a device needs to sample, in one checked file.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"FEWSTEP\0"
//! 8       2     format version, u16 little-endian (1 or 2)
//! 10      2     reserved, zero
//! 12      4     body length N, u32 little-endian
//! 16      N     body: postcard encoding of [`Bundle`]
//! version 2 only:
//! 16+N    P     zero padding to the next multiple of 16
//! W       M     the network's weights as a pack (`crate::pack`), 16-aligned in the file so
//!               a microcontroller reads them in place from flash
//! end-4   4     CRC-32 (IEEE) of every byte before it, u32 little-endian
//! ```
//!
//! Version 1 stores a network's weights inside the body as a burnpack (burn's format,
//! 256-byte aligned tensors and a CBOR table); version 2 leaves the body's weights empty and
//! appends the pack (f32, f16 or int8 weights). Both are read; [`Bundle::to_bytes`] writes
//! version 2 when the weights are a pack, version 1 otherwise (mixtures, burnpack weights).
//!
//! Decoding untrusted bytes never panics: the header is checked against the input length
//! before anything is allocated, the checksum before the body is parsed, and postcard
//! (through serde's cautious size hints) never pre-allocates more than the input holds.
//! Every failure is a [`BundleError`] that says what is wrong and what to do.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::config::NetConfig;
use crate::gmm::Mixture;
use crate::pack::{PACK_ALIGN, PACK_MAGIC};
use crate::precond::Precond;
use crate::schedule::Schedule;

/// The 8 bytes every bundle starts with.
pub const MAGIC: [u8; 8] = *b"FEWSTEP\0";
/// The newest format version this code reads and writes (it reads 1 too).
pub const FORMAT_VERSION: u16 = 2;
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
        "bundle format version {found} is not supported (this build reads versions 1 to {FORMAT_VERSION}); update fewstep or re-export the bundle"
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

/// The solver a bundle names (defined beside the solvers; part of the bundle format).
pub use crate::solver::SolverKind;

/// The denoiser of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    /// A network: its config and its weights.
    Network {
        /// Architecture.
        config: NetConfig,
        /// Weights: a weights pack (`crate::pack`, starts with `FWPK`; stored after the
        /// body in version 2) or a burnpack (version 1).
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
    /// Multiply-accumulates of one image with the bundle's solver and levels
    /// ([`NetConfig::macs_per_evaluation`](crate::config::NetConfig::macs_per_evaluation)
    /// times the evaluations); `None` for a mixture, which has no network.
    pub fn macs_per_image(&self) -> Option<u64> {
        match &self.model {
            ModelSpec::Network { config, .. } => Some(
                config
                    .macs_per_evaluation()
                    .saturating_mul(self.solver.nfe(self.schedule.len()) as u64),
            ),
            ModelSpec::Mixture(_) => None,
        }
    }

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
    /// the config before anything is allocated: the weights as they are loaded (a burnpack
    /// twice; a pack, its f32 values and their burnpack) plus `batch` times one image's
    /// activations. Call after
    /// [`Bundle::validate`] (which [`Bundle::from_bytes`] runs).
    pub fn memory_bytes(&self, batch: usize) -> u64 {
        let (fixed, per_image) = match &self.model {
            // A pack is turned into a burnpack for burn (f32 values, each tensor 256-byte
            // aligned) and then loaded: the pack, the values, the burnpack and the network.
            ModelSpec::Network { config, weights } if weights.starts_with(&PACK_MAGIC) => {
                let (mut values, mut tensors) = (0u64, 0u64);
                config.visit_parameters(&mut |_, shape| {
                    values += shape.iter().product::<usize>() as u64;
                    tensors += 1;
                });
                let burnpack = 4 * values + 256 * tensors + (64 << 10);
                (
                    (weights.len() as u64).saturating_add(3 * burnpack),
                    config.activation_bytes(),
                )
            }
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

    /// Encodes to the file format (version 2 when the weights are a pack, else 1). Fails
    /// only if the bundle is inconsistent.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        self.validate()?;
        let encode = |b: &Bundle| {
            postcard::to_allocvec(b).map_err(|e| BundleError::Malformed(e.to_string()))
        };
        let (version, body, pack) = match &self.model {
            ModelSpec::Network { config, weights } if weights.starts_with(&PACK_MAGIC) => {
                // The body without the weights, which follow it aligned.
                let meta = Bundle {
                    name: self.name.clone(),
                    description: self.description.clone(),
                    image: self.image,
                    label_count: self.label_count,
                    precond: self.precond,
                    schedule: self.schedule.clone(),
                    solver: self.solver,
                    model: ModelSpec::Network {
                        config: config.clone(),
                        weights: Vec::new(),
                    },
                    provenance: self.provenance.clone(),
                };
                (2u16, encode(&meta)?, weights.as_slice())
            }
            _ => (1u16, encode(self)?, &[][..]),
        };
        let len = u32::try_from(body.len())
            .map_err(|_| BundleError::Inconsistent("bundle body exceeds 4 GiB".to_string()))?;
        let mut out =
            Vec::with_capacity(HEADER_LEN + body.len() + PACK_ALIGN + pack.len() + CRC_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        if version == 2 {
            out.resize(out.len().next_multiple_of(PACK_ALIGN), 0);
            out.extend_from_slice(pack);
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes and validates untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let (mut bundle, pack) = Bundle::from_bytes_in_place(bytes)?;
        if let (ModelSpec::Network { weights, .. }, Some(pack)) = (&mut bundle.model, pack) {
            *weights = pack.to_vec();
        }
        Ok(bundle)
    }

    /// Decodes and validates untrusted bytes, leaving a version-2 bundle's weights pack in
    /// place: returns the bundle (its network weights empty) and the pack. What a
    /// microcontroller calls, so the weights are never copied to RAM. A version-1 bundle
    /// returns its burnpack weights in the bundle and `None`.
    pub fn from_bytes_in_place(bytes: &[u8]) -> Result<(Bundle, Option<&[u8]>), BundleError> {
        let (version, body, pack) = split(bytes)?;
        let (wire, rest): (BundleWire, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed(alloc::format!(
                "{} unread bytes in the body",
                rest.len()
            )));
        }
        let bundle = Bundle::try_from(wire)?;
        bundle.validate()?;
        let pack = match (&bundle.model, version) {
            (_, 1) => None,
            (ModelSpec::Network { weights, .. }, _) if weights.is_empty() => Some(pack),
            (ModelSpec::Network { .. }, _) => {
                return Err(BundleError::Malformed(
                    "a version-2 bundle keeps a network's weights after the body".to_string(),
                ));
            }
            (ModelSpec::Mixture(_), _) => {
                return Err(BundleError::Malformed(
                    "a version-2 bundle holds a network; mixtures are written as version 1"
                        .to_string(),
                ));
            }
        };
        Ok((bundle, pack))
    }

    /// The format version of `bytes`' header (1 or 2), checked like [`Bundle::from_bytes`]
    /// checks it, without decoding the body.
    pub fn version_of(bytes: &[u8]) -> Result<u16, BundleError> {
        split(bytes).map(|(v, _, _)| v)
    }
}

/// Checks the header, lengths and checksum; returns the version, the body and (version 2)
/// the weights section.
fn split(bytes: &[u8]) -> Result<(u16, &[u8], &[u8]), BundleError> {
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
    if version != 1 && version != 2 {
        return Err(BundleError::UnsupportedVersion { found: version });
    }
    if bytes[10] != 0 || bytes[11] != 0 {
        return Err(BundleError::Malformed(
            "reserved header bytes are not zero".to_string(),
        ));
    }
    let body_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as u64;
    let body_end = HEADER_LEN as u64 + body_len;
    let found = bytes.len() as u64;
    // Version 2: the weights start at the next multiple of 16 after the body and run to
    // the checksum.
    let weights_at = if version == 2 {
        body_end.next_multiple_of(PACK_ALIGN as u64)
    } else {
        body_end
    };
    let min_len = weights_at + CRC_LEN as u64;
    if found < min_len {
        return Err(BundleError::Truncated {
            expected: min_len,
            found,
        });
    }
    if version == 1 && found > min_len {
        return Err(BundleError::TrailingBytes(found - min_len));
    }
    // 2. Checksum before parsing anything of the body.
    let end = bytes.len() - CRC_LEN;
    let stored = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    let computed = crc32(&bytes[..end]);
    if stored != computed {
        return Err(BundleError::ChecksumMismatch { stored, computed });
    }
    let (body_end, weights_at) = (body_end as usize, weights_at as usize);
    if bytes[body_end..weights_at].iter().any(|&b| b != 0) {
        return Err(BundleError::Malformed(
            "the padding before the weights is not zero".to_string(),
        ));
    }
    Ok((
        version,
        &bytes[HEADER_LEN..body_end],
        &bytes[weights_at..end],
    ))
}
