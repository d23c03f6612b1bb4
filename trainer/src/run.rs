//! A run directory: `config.json` (everything needed to reproduce the run), `log.jsonl`
//! (one line per step: losses and the current schedule) and `checkpoint.bin` (written to a
//! temporary file and renamed, so an interruption never leaves a half checkpoint).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Magic of trainer checkpoints.
const CHECKPOINT_MAGIC: &[u8; 8] = b"FEWSTCK1";

/// Everything a run needs to continue exactly where it stopped.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// Steps completed (all stages together).
    pub step: u64,
    /// Network weights (burnpack), if the run trains a network.
    pub net: Option<Vec<u8>>,
    /// EMA weights (burnpack).
    pub ema: Option<Vec<u8>>,
    /// Network optimizer state (burnpack).
    pub net_optim: Option<Vec<u8>>,
    /// Schedule logits `v`, if the run learns a schedule.
    pub logits: Option<Vec<f64>>,
    /// Schedule optimizer state (burnpack).
    pub schedule_optim: Option<Vec<u8>>,
}

/// Writes `bytes` to `path` atomically (see [`sampler_core::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sampler_core::fs::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A run directory.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

impl RunDir {
    /// Opens (creating if needed) a run directory.
    pub fn create(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// Path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// Path of `checkpoint.bin`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join("checkpoint.bin")
    }

    /// Path of `log.jsonl`.
    pub fn log_path(&self) -> PathBuf {
        self.path.join("log.jsonl")
    }

    /// Starts or resumes the run described by `config`: a fresh directory gets the config and
    /// an empty log; one with a checkpoint must hold the same config, and its log is cut back
    /// to the checkpoint's step. Returns the checkpoint to resume from.
    pub fn start<C: Serialize + for<'de> Deserialize<'de> + PartialEq>(
        &self,
        config: &C,
    ) -> Result<Option<Checkpoint>> {
        let checkpoint = self.load_checkpoint()?;
        match &checkpoint {
            Some(ck) => {
                let saved: C = self.load_config()?;
                if saved != *config {
                    bail!(
                        "{} holds a run with another config; use a new --run directory or the same flags",
                        self.path.display()
                    );
                }
                self.truncate_log(ck.step)?;
            }
            None => {
                self.save_config(config)?;
                self.truncate_log(0)?;
            }
        }
        Ok(checkpoint)
    }

    /// Saves the run's config.
    pub fn save_config<C: Serialize>(&self, config: &C) -> Result<()> {
        write_atomic(
            &self.config_path(),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )
    }

    /// Loads the run's config.
    pub fn load_config<C: for<'de> Deserialize<'de>>(&self) -> Result<C> {
        let text = std::fs::read_to_string(self.config_path()).with_context(|| {
            format!(
                "{} is not a run directory (no config.json)",
                self.path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed config.json", self.path.display()))
    }

    /// Saves a checkpoint atomically.
    pub fn save_checkpoint(&self, ck: &Checkpoint) -> Result<()> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        let body = postcard::to_allocvec(ck)?;
        bytes.extend_from_slice(&sampler_core::bundle::crc32(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        write_atomic(&self.checkpoint_path(), &bytes)
    }

    /// Loads the checkpoint, if one exists.
    pub fn load_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint_path();
        if !path.exists() {
            return Ok(None);
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() < 12 || &bytes[..8] != CHECKPOINT_MAGIC {
            bail!("{} is not a fewstep checkpoint", path.display());
        }
        let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if crc != sampler_core::bundle::crc32(&bytes[12..]) {
            bail!("{} is corrupted (checksum mismatch)", path.display());
        }
        Ok(Some(postcard::from_bytes(&bytes[12..]).with_context(
            || format!("{} is malformed", path.display()),
        )?))
    }

    /// Keeps the log lines of steps `< step` (after a resume, later lines would be repeated).
    pub fn truncate_log(&self, step: u64) -> Result<()> {
        let path = self.log_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())
    }

    /// Appends one JSON line to the log.
    pub fn log(&self, entry: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;
        writeln!(f, "{entry}")?;
        Ok(())
    }
}
