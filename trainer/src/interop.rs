//! EDM checkpoints in and out. `trainer import` turns a state dict of NVlabs/edm's
//! `SongUNet` (inside `EDMPrecond` or `VPPrecond`, as `network-snapshot-*.pkl` holds it under
//! `ema`; safetensors or a PyTorch `.pt`, read through burn-store) and its config JSON into a
//! base bundle; `trainer export --format safetensors` writes a bundle's network back in
//! EDM's names and layouts with the same JSON, so fine-tuned weights go back to PyTorch.
//!
//! Names are translated by one table, [`UNetConfig::edm_layer_names`], built from the U-Net's
//! topology; inside a layer only GroupNorm's fields differ (`weight`/`bias` against
//! `gamma`/`beta`) and Linear weights are transposed (PyTorch `[out, in]`, burn `[in, out]`).
//! Everything in the file must map: unknown names, missing tensors, shapes and dtypes that do
//! not fit are errors that list them. Two kinds of entry carry no weights and are checked
//! instead of mapped: the `resample_filter` buffers of EDM's resampling convolutions (they
//! must be the `[1, 1]` filter fewstep implements) and `map_augment` (augmentation
//! conditioning, which EDM's sampler never uses), both reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::store::ModuleStore;
use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::model::{NetConfig, UNetConfig};
use sampler_core::pack::{PackTensor, PackView, WeightDtype, encode};
use sampler_core::precond::Precond;
use sampler_core::schedule::Schedule;
use serde::{Deserialize, Serialize};

/// The config JSON: `SongUNet`'s keyword arguments, the preconditioning, and (written by
/// `export`, optional for `import`) what a bundle adds to the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdmConfig {
    /// `edm`, `vp` or `ve`.
    #[serde(default = "default_precond")]
    pub precond: String,
    /// EDMPrecond's sigma_data.
    #[serde(default = "default_sigma_data")]
    pub sigma_data: f64,
    /// Smallest noise level the network supports (EDMPrecond's sigma_min; 0.002 if 0).
    #[serde(default)]
    pub sigma_min: f64,
    /// Largest (EDMPrecond's sigma_max; 80 if infinite or absent).
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// VPPrecond's beta_d.
    #[serde(default = "default_beta_d")]
    pub beta_d: f64,
    /// VPPrecond's beta_min.
    #[serde(default = "default_beta_min")]
    pub beta_min: f64,
    /// VPPrecond's M.
    #[serde(default = "default_m", rename = "M")]
    pub m: f64,
    /// SongUNet's arguments (defaults: SongUNet's own).
    pub img_resolution: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Class labels (0: unconditional).
    #[serde(default)]
    pub label_dim: usize,
    /// Augmentation labels (unused at sampling; its weight is left out).
    #[serde(default)]
    pub augment_dim: usize,
    /// Base channel count.
    #[serde(default = "default_model_channels")]
    pub model_channels: usize,
    /// Per-resolution channel multipliers.
    #[serde(default = "default_channel_mult")]
    pub channel_mult: Vec<usize>,
    /// Embedding width multiplier.
    #[serde(default = "default_four")]
    pub channel_mult_emb: usize,
    /// Residual blocks per resolution.
    #[serde(default = "default_four")]
    pub num_blocks: usize,
    /// Resolutions with self-attention.
    #[serde(default = "default_attn")]
    pub attn_resolutions: Vec<usize>,
    /// Training-only: dropout.
    #[serde(default)]
    pub dropout: f64,
    /// Training-only: label dropout.
    #[serde(default)]
    pub label_dropout: f64,
    /// Must be `positional` (DDPM++).
    #[serde(default = "default_embedding")]
    pub embedding_type: String,
    /// Noise embedding width multiplier.
    #[serde(default = "default_one")]
    pub channel_mult_noise: usize,
    /// Must be `standard`.
    #[serde(default = "default_standard")]
    pub encoder_type: String,
    /// Must be `standard`.
    #[serde(default = "default_standard")]
    pub decoder_type: String,
    /// Must be `[1, 1]`.
    #[serde(default = "default_filter")]
    pub resample_filter: Vec<f64>,
    /// Written by `export`: the bundle's name, description, levels and provenance, so that
    /// importing an exported bundle gives the bundle back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fewstep: Option<FewstepExtras>,
}

/// What a bundle holds beyond EDM's network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewstepExtras {
    /// Bundle name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The T noise levels.
    pub levels: Vec<f32>,
    /// Provenance.
    pub provenance: Provenance,
}

fn default_precond() -> String {
    "edm".into()
}
fn default_sigma_data() -> f64 {
    0.5
}
fn default_beta_d() -> f64 {
    19.9
}
fn default_beta_min() -> f64 {
    0.1
}
fn default_m() -> f64 {
    1000.0
}
fn default_model_channels() -> usize {
    128
}
fn default_channel_mult() -> Vec<usize> {
    vec![1, 2, 2, 2]
}
fn default_four() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_attn() -> Vec<usize> {
    vec![16]
}
fn default_embedding() -> String {
    "positional".into()
}
fn default_standard() -> String {
    "standard".into()
}
fn default_filter() -> Vec<f64> {
    vec![1.0, 1.0]
}

impl EdmConfig {
    /// The U-Net, the preconditioning and the level range, or why fewstep cannot run it.
    fn to_fewstep(&self) -> Result<(UNetConfig, Precond, f64, f64)> {
        let mut unsupported = Vec::new();
        if self.embedding_type != "positional" {
            unsupported.push(format!(
                "embedding_type '{}' (fewstep implements DDPM++'s 'positional')",
                self.embedding_type
            ));
        }
        for (what, v) in [
            ("encoder_type", &self.encoder_type),
            ("decoder_type", &self.decoder_type),
        ] {
            if v != "standard" {
                unsupported.push(format!("{what} '{v}' (fewstep implements 'standard')"));
            }
        }
        if self.resample_filter != [1.0, 1.0] {
            unsupported.push(format!(
                "resample_filter {:?} (fewstep implements [1, 1])",
                self.resample_filter
            ));
        }
        if !unsupported.is_empty() {
            bail!(
                "this network is not a DDPM++ SongUNet fewstep can run: {}",
                unsupported.join("; ")
            );
        }
        let unet = UNetConfig::new(self.img_resolution, self.in_channels, self.out_channels)
            .with_label_dim(self.label_dim)
            .with_model_channels(self.model_channels)
            .with_channel_mult(self.channel_mult.clone())
            .with_channel_mult_emb(self.channel_mult_emb)
            .with_num_blocks(self.num_blocks)
            .with_attn_resolutions(self.attn_resolutions.clone())
            .with_channel_mult_noise(self.channel_mult_noise);
        unet.validate()
            .map_err(|e| anyhow::anyhow!("the config's network: {e}"))?;
        let precond = match self.precond.as_str() {
            "edm" => Precond::Edm {
                sigma_data: self.sigma_data as f32,
            },
            "vp" => Precond::Vp {
                beta_d: self.beta_d as f32,
                beta_min: self.beta_min as f32,
                m: self.m as f32,
            },
            "ve" => Precond::Ve,
            other => bail!("unknown precond '{other}': edm, vp or ve"),
        };
        let s_min = if self.sigma_min > 0.0 {
            self.sigma_min
        } else {
            sampler_core::schedule::SIGMA_MIN
        };
        let s_max = match self.sigma_max {
            Some(s) if s.is_finite() && s > s_min => s,
            _ => sampler_core::schedule::SIGMA_MAX,
        };
        Ok((unet, precond, s_min, s_max))
    }

    /// The JSON of a bundle's U-Net (the inverse of [`EdmConfig::to_fewstep`]).
    fn from_bundle(b: &Bundle, c: &UNetConfig) -> EdmConfig {
        let (precond, sigma_data, beta_d, beta_min, m) = match b.precond {
            Precond::Edm { sigma_data } => ("edm", sigma_data as f64, 19.9, 0.1, 1000.0),
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => ("vp", 0.5, beta_d as f64, beta_min as f64, m as f64),
            Precond::Ve => ("ve", 0.5, 19.9, 0.1, 1000.0),
        };
        EdmConfig {
            precond: precond.into(),
            sigma_data,
            sigma_min: b.schedule.s_min() as f64,
            sigma_max: Some(b.schedule.s_max() as f64),
            beta_d,
            beta_min,
            m,
            img_resolution: c.img_resolution,
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            label_dim: c.label_dim,
            augment_dim: 0,
            model_channels: c.model_channels,
            channel_mult: c.channel_mult.clone(),
            channel_mult_emb: c.channel_mult_emb,
            num_blocks: c.num_blocks,
            attn_resolutions: c.attn_resolutions.clone(),
            dropout: 0.0,
            label_dropout: 0.0,
            embedding_type: default_embedding(),
            channel_mult_noise: c.channel_mult_noise,
            encoder_type: default_standard(),
            decoder_type: default_standard(),
            resample_filter: default_filter(),
            fewstep: Some(FewstepExtras {
                name: b.name.clone(),
                description: b.description.clone(),
                levels: b.schedule.sigmas().to_vec(),
                provenance: b.provenance.clone(),
            }),
        }
    }
}

/// Our parameter name -> EDM's name without the `model.` prefix. (Only Linear weights are
/// rank 2, so whether a tensor is transposed follows from its shape.)
fn edm_name(ours: &str, layers: &[(String, String)]) -> Option<String> {
    let (layer, field) = ours.rsplit_once('.')?;
    // The longest layer prefix: `UNet.enc.1` must not take `UNet.enc.10.conv0`.
    let (ours_prefix, edm_prefix) = layers
        .iter()
        .filter(|(o, _)| layer == o || layer.starts_with(&format!("{o}.")))
        .max_by_key(|(o, _)| o.len())?;
    let inner = &layer[ours_prefix.len()..]; // "" or ".norm0"
    let edm_field = match field {
        "gamma" => "weight",
        "beta" => "bias",
        f => f,
    };
    Some(format!("{edm_prefix}{inner}.{edm_field}"))
}

/// `values` of shape `[a, b]` as `[b, a]`.
fn transpose(values: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..a {
        for j in 0..b {
            out[j * a + i] = values[i * b + j];
        }
    }
    out
}

/// A tensor of the state dict as f32 values.
struct Loaded {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Loaded>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors: BTreeMap<String, burn::store::burn_pack::Tensor> = match ext {
        "safetensors" => burn::store::SafetensorsStore::from_file(path)
            .get_all_tensors()
            .cloned()
            .map_err(|e| anyhow::anyhow!("{e}")),
        "pt" | "pth" | "bin" => burn::store::PytorchStore::from_file(path)
            .get_all_tensors()
            .cloned()
            .map_err(|e| anyhow::anyhow!("{e}")),
        _ => bail!(
            "{}: give a .safetensors or a PyTorch .pt state dict (scripts/edm_to_safetensors.py \
             converts EDM's network-snapshot-*.pkl)",
            path.display()
        ),
    }
    .with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let shape: Vec<usize> = t.shape.iter().copied().collect();
        let bytes = t.to_bytes().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        use burn::store::burn_pack::DType;
        let values: Vec<f32> = match t.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| sampler_core::pack::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            other => bail!("tensor '{name}' is {other:?}; network weights are floats"),
        };
        if values.len() != shape.iter().product::<usize>() {
            bail!(
                "tensor '{name}' has {} values for shape {shape:?}",
                values.len()
            );
        }
        out.insert(name, Loaded { shape, values });
    }
    Ok(out)
}

/// What `import` did, for its report.
pub struct Imported {
    /// The base bundle.
    pub bundle: Bundle,
    /// Entries checked but not mapped (resample filters, augmentation weights).
    pub skipped: Vec<String>,
}

/// Reads `state_dict` (+ `config`) into a bundle with `t` EDM levels (or the levels the
/// config's `fewstep` section carries) and weights stored as `dtype`.
pub fn import(state_dict: &Path, config: &Path, t: usize, dtype: WeightDtype) -> Result<Imported> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let cfg: EdmConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an EDM network config", config.display()))?;
    let (unet, precond, s_min, s_max) = cfg.to_fewstep()?;
    let mut file = read_state_dict(state_dict)?;
    // EDMPrecond/VPPrecond keep the U-Net under `model.`; a bare SongUNet has no prefix.
    let prefix = if file.keys().any(|k| k.starts_with("model.")) {
        "model."
    } else {
        ""
    };
    let net = NetConfig::UNet(unet.clone());
    let layers = unet.edm_layer_names();
    let mut tensors = Vec::new();
    let mut problems = Vec::new();
    for (ours, shape) in net.parameters() {
        let linear = shape.len() == 2;
        let Some(edm) = edm_name(&ours, &layers) else {
            problems.push(format!("no EDM name for '{ours}' (a fewstep bug)"));
            continue;
        };
        let key = format!("{prefix}{edm}");
        let Some(t) = file.remove(&key) else {
            problems.push(format!("'{key}' is missing"));
            continue;
        };
        let want: Vec<usize> = if linear {
            vec![shape[1], shape[0]]
        } else {
            shape.clone()
        };
        if t.shape != want {
            problems.push(format!(
                "'{key}' has shape {:?}, the config needs {want:?}",
                t.shape
            ));
            continue;
        }
        let values = if linear {
            transpose(&t.values, want[0], want[1])
        } else {
            t.values
        };
        if values.iter().any(|v| !v.is_finite()) {
            problems.push(format!("'{key}' holds NaN or infinite values"));
            continue;
        }
        tensors.push(PackTensor {
            name: ours,
            shape,
            values,
        });
    }
    // What is left must be a checked, weight-free entry.
    let mut skipped = Vec::new();
    for (key, t) in file {
        let bare = key.strip_prefix(prefix).unwrap_or(&key);
        if bare.ends_with(".resample_filter") {
            // EDM's [1, 1] filter: f f^T / sum(f)^2 = four times 0.25.
            if t.values.len() == 4 && t.values.iter().all(|&v| v == 0.25) {
                skipped.push(key);
            } else {
                problems.push(format!(
                    "'{key}' is not the [1, 1] resample filter fewstep implements"
                ));
            }
        } else if bare == "map_augment.weight" {
            skipped.push(format!(
                "{key} (augmentation conditioning, unused at sampling)"
            ));
        } else {
            problems.push(format!(
                "'{key}' is not a parameter of this config's network"
            ));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(12);
        bail!(
            "{} does not match {}: {}{}",
            state_dict.display(),
            config.display(),
            problems.join("; "),
            if n > 12 {
                format!("; and {} more", n - 12)
            } else {
                String::new()
            }
        );
    }
    let weights = encode(&tensors, dtype).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (name, description, schedule, provenance) = match &cfg.fewstep {
        Some(x) => (
            x.name.clone(),
            x.description.clone(),
            Schedule::new(x.levels.clone()).map_err(|e| anyhow::anyhow!("fewstep levels: {e}"))?,
            x.provenance.clone(),
        ),
        None => (
            state_dict
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "edm".into()),
            format!("imported from {}", state_dict.display()),
            Schedule::edm(t, s_min, s_max)?,
            Provenance {
                dataset: "edm import".into(),
                training_steps: 0,
                schedule_method: "edm-rho7".into(),
                created_unix: 0,
            },
        ),
    };
    let bundle = Bundle {
        name,
        description,
        image: ImageShape {
            channels: unet.in_channels as u32,
            height: unet.img_resolution as u32,
            width: unet.img_resolution as u32,
        },
        label_count: unet.label_dim as u32,
        precond,
        schedule,
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            config: net,
            weights,
        },
        provenance,
    };
    bundle.validate()?;
    Ok(Imported { bundle, skipped })
}

/// Writes `bundle`'s U-Net as an EDM state dict (`model.*` keys, PyTorch layouts, f32, EDM's
/// resample-filter buffers included so `EDMPrecond.load_state_dict` takes it strictly) to
/// `out` and its config JSON to `config_out`.
pub fn export_safetensors(bundle: &Bundle, out: &Path, config_out: &Path) -> Result<()> {
    let ModelSpec::Network {
        config: NetConfig::UNet(unet),
        weights,
    } = &bundle.model
    else {
        bail!("only U-Net bundles have an EDM equivalent (this one is an MLP or a mixture)");
    };
    let net = NetConfig::UNet(unet.clone());
    // Any weights encoding to f32 values through the pack reader.
    let pack = sampler_core::model::weights_to_pack(&net, weights, WeightDtype::F32)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let view = PackView::parse(&pack).map_err(|e| anyhow::anyhow!("{e}"))?;
    let layers = unet.edm_layer_names();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in view.tensors() {
        let edm =
            edm_name(t.name, &layers).with_context(|| format!("no EDM name for '{}'", t.name))?;
        let shape = t.shape().to_vec();
        let linear = shape.len() == 2;
        let (shape, values) = if linear {
            (
                vec![shape[1], shape[0]],
                transpose(&t.to_vec(), shape[0], shape[1]),
            )
        } else {
            (shape, t.to_vec())
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((format!("model.{edm}"), shape, bytes));
    }
    // The resampling convolutions' filter buffers, as EDM registers them.
    let filter: Vec<u8> = [0.25f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (enc, dec) = (
        layers.iter().filter(|(o, _)| o.starts_with("UNet.enc.")),
        layers.iter().filter(|(o, _)| o.starts_with("UNet.dec.")),
    );
    for (_, edm) in enc.chain(dec) {
        if edm.ends_with("_down") || edm.ends_with("_up") {
            for conv in ["conv0", "skip"] {
                tensors.push((
                    format!("model.{edm}.{conv}.resample_filter"),
                    vec![1, 1, 2, 2],
                    filter.clone(),
                ));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| anyhow::anyhow!("cannot encode safetensors: {e}"))?;
    let cfg = EdmConfig::from_bundle(bundle, unet);
    let mut json = serde_json::to_string_pretty(&cfg)?;
    json.push('\n');
    // Both files or neither: a refused config path must not leave the tensors behind.
    sampler_core::fs::write_atomic_all(&[(out, &bytes), (config_out, json.as_bytes())])
        .with_context(|| {
            format!(
                "cannot write {} and {}",
                out.display(),
                config_out.display()
            )
        })?;
    Ok(())
}

/// The config JSON written beside `out` (`model.safetensors` -> `model.json`).
pub fn config_path_for(out: &Path) -> PathBuf {
    out.with_extension("json")
}
