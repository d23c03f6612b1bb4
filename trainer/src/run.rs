//! How a training run is driven and kept: [`train`], the one loop of pre-training and
//! fine-tuning (steps, log lines, progress, checkpoints), and the run directory it works
//! in: `config.json` (everything needed to reproduce the run), `log.jsonl`
//! (one line per step: losses and the current schedule), `checkpoint.bin` (written to a
//! temporary file and renamed, so an interruption never leaves a half checkpoint) and
//! `run.lock` while a trainer works in it.
//!
//! A resumed run must have the same config, except for what does not change the steps already
//! taken: the learning rates, the length (`--steps`, `--rounds`) and the checkpoint interval.
//! Those changes are saved and logged. Nothing in the directory is rewritten before the
//! checkpoint has been accepted by the model it is for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
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
    /// Fine-tuning state that is not weights but still decides the next steps (written after
    /// the fields above, so checkpoints from before it existed still load, without it).
    #[serde(skip)]
    pub resume: ResumeState,
}

/// What a fine-tuning run computed from weights it no longer has: restoring it makes a
/// resumed run bit-exact where recomputing would not be.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResumeState {
    /// The teacher pool's round and its targets (`[pool, d]`, row-major). With `--teacher
    /// shipped` they are solutions of the weights at the start of the round, which stage 2
    /// has changed since.
    pub teacher_targets: Option<(u64, Vec<f32>)>,
    /// The trajectory cache (`--traj-refresh`): states simulated under earlier levels.
    pub trajectories: Option<TrajectoryState>,
}

/// The trajectory cache as plain values.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrajectoryState {
    /// Round of the teacher pool the states belong to.
    pub round: u64,
    /// `x_0 .. x_{T-2}` then `x_{T-1}`, each `[pool, d]` row-major.
    pub states: Vec<Vec<f32>>,
    /// Next entry to re-simulate.
    pub cursor: u64,
}

/// The loss or the weights of a run became NaN or infinite.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Diverged(pub String);

/// Adds to a [`Diverged`] error what the user can do: resume from the last checkpoint written
/// (always one with finite weights) or start again. Other errors pass unchanged.
pub fn diverged(e: anyhow::Error, last_checkpoint: Option<u64>) -> anyhow::Error {
    if e.downcast_ref::<Diverged>().is_none() {
        return e;
    }
    match last_checkpoint {
        Some(step) => anyhow::anyhow!(
            "{e}; stopped. The checkpoint of step {step} is kept: lower the learning rate \
             (--lr, --lr-schedule, --lr-weights) and run the same command to resume from it"
        ),
        None => anyhow::anyhow!(
            "{e}; stopped before the first checkpoint, so nothing was kept: lower the learning \
             rate and start again"
        ),
    }
}

/// The value of a one-element tensor.
pub fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().inner().into_scalar::<f64>()
}

/// A [`Diverged`] error unless `loss` is finite; `stage` names the fine-tuning stage (none
/// in pre-training).
pub fn check_finite(loss: f64, step: u64, stage: Option<u8>) -> Result<()> {
    if !loss.is_finite() {
        let what = match stage {
            Some(stage) => format!("the stage-{stage} loss"),
            None => "the loss".to_string(),
        };
        return Err(Diverged(format!("{what} became {loss} at step {step}")).into());
    }
    Ok(())
}

/// What [`train`] needs of a run: pre-training ([`crate::pretrain`]) or the two-stage
/// optimization ([`crate::two_stage`]).
pub trait Training {
    /// What defines the run, saved as `config.json`.
    type Config: Serialize + for<'de> Deserialize<'de>;
    /// What one step reports.
    type Record;
    /// The run's config.
    fn config(&self) -> &Self::Config;
    /// Steps done (all stages together).
    fn steps_done(&self) -> u64;
    /// Steps of the whole run.
    fn total_steps(&self) -> u64;
    /// Steps between checkpoints.
    fn checkpoint_every(&self) -> u64;
    /// One optimizer step.
    fn train_step(&mut self) -> Result<Self::Record>;
    /// The step's line of `log.jsonl`, written after the step.
    fn log_entry(&self, record: &Self::Record) -> Result<serde_json::Value>;
    /// The progress bar's message for the step (the rate is appended).
    fn progress(&self, record: &Self::Record) -> String;
    /// The state to save.
    fn save(&self) -> Result<Checkpoint>;
    /// Whether the state is all finite (checked before every checkpoint).
    fn finite(&self) -> bool;
}

/// Runs a training run to its end (or to `stop_after` steps): takes up the checkpoint in
/// `run_dir` if there is one, builds the run with `open(config, checkpoint, first device)`,
/// then logs every step, checkpoints every `checkpoint_every` steps and at the end, and
/// turns a divergence into an error that names the checkpoint to resume from.
pub fn train<T: Training>(
    run_dir: &RunDir,
    config: T::Config,
    devices: &[Device],
    stop_after: Option<u64>,
    quiet: bool,
    open: impl FnOnce(T::Config, Option<Checkpoint>, &Device) -> Result<T>,
) -> Result<T> {
    let started = run_dir.start(&config)?;
    let mut checkpoints = Checkpoints::new(run_dir, started.checkpoint.as_ref().map(|c| c.step));
    let device = devices.first().context("no device to train on")?;
    let mut run = open(config, started.checkpoint.clone(), device)?;
    run_dir.accept(run.config(), &started)?;
    let total = run.total_steps();
    let end = stop_after.map_or(total, |s| s.min(total));
    let bar = crate::progress(total, quiet);
    bar.set_position(run.steps_done());
    let start = Instant::now();
    let first = run.steps_done();
    while run.steps_done() < end {
        let rec = run.train_step().map_err(|e| checkpoints.diverged(e))?;
        checkpoints.step_ok()?;
        run_dir.log(&run.log_entry(&rec)?)?;
        let step = run.steps_done();
        let rate = (step - first) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} {:.2} steps/s", run.progress(&rec), rate));
        bar.set_position(step);
        if step % run.checkpoint_every().max(1) == 0 || step == end {
            checkpoints.offer(run.save()?, run.finite(), step == end)?;
        }
    }
    bar.finish_and_clear();
    Ok(run)
}

/// Writes a run's checkpoints so that a resume never starts from a diverged state: a
/// checkpoint is held back until the next step's loss, computed on its weights, comes out
/// finite (an update can leave finite weights that already give a NaN loss); the one at the
/// end of the run is written at once.
pub struct Checkpoints<'a> {
    dir: &'a RunDir,
    pending: Option<Checkpoint>,
    last: Option<u64>,
}

impl<'a> Checkpoints<'a> {
    /// For a run resumed from the checkpoint of step `resumed_from` (if any).
    pub fn new(dir: &'a RunDir, resumed_from: Option<u64>) -> Self {
        Checkpoints {
            dir,
            pending: None,
            last: resumed_from,
        }
    }

    /// Call after every step whose loss was finite: the held checkpoint is now known good.
    pub fn step_ok(&mut self) -> Result<()> {
        if let Some(ck) = self.pending.take() {
            self.dir.save_checkpoint(&ck)?;
            self.last = Some(ck.step);
        }
        Ok(())
    }

    /// A checkpoint of the current state, whose weights `finite` says are all finite.
    pub fn offer(&mut self, ck: Checkpoint, finite: bool, end_of_run: bool) -> Result<()> {
        if !finite {
            return Err(self.diverged(
                Diverged(format!(
                    "the weights became NaN or infinite before step {}",
                    ck.step
                ))
                .into(),
            ));
        }
        if end_of_run {
            self.dir.save_checkpoint(&ck)?;
            self.last = Some(ck.step);
        } else {
            self.pending = Some(ck);
        }
        Ok(())
    }

    /// [`diverged`] with the last checkpoint written.
    pub fn diverged(&self, e: anyhow::Error) -> anyhow::Error {
        diverged(e, self.last)
    }
}

/// Seconds since the Unix epoch (0 on a clock set before it): when an exported bundle was
/// made, for its provenance.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (see [`sampler_core::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sampler_core::fs::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Config fields a resumed run may change (they do not change the steps already taken).
pub const RESUMABLE_FIELDS: &[&str] = &[
    "lr",
    "lr_schedule",
    "lr_weights",
    "steps",
    "rounds",
    "checkpoint_every",
];

/// A run directory.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
    /// Held while this process trains in the directory.
    _lock: Option<RunLock>,
}

/// `run.lock`, holding the process id of the trainer using the directory; removed on drop.
struct RunLock(PathBuf);

impl RunLock {
    /// Takes the lock, or says which live process holds it. A lock left by a process that no
    /// longer exists (killed) is taken over.
    fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join("run.lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())?;
                    return Ok(RunLock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    let alive = match pid {
                        Some(pid) if Path::new("/proc/self").exists() => {
                            Path::new("/proc").join(pid.to_string()).exists()
                        }
                        // Without /proc we cannot tell: assume the holder is alive.
                        _ => true,
                    };
                    if alive {
                        bail!(
                            "another trainer (process {}) is using {}; wait for it, or remove {} if \
                             no trainer runs there",
                            pid.map_or("?".to_string(), |p| p.to_string()),
                            dir.display(),
                            path.display()
                        );
                    }
                    std::fs::remove_file(&path).ok();
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        bail!("cannot take the lock {}", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What [`RunDir::start`] found: the checkpoint to resume from and the resumable config
/// fields that differ from the saved config.
pub struct Started {
    /// The checkpoint, if the run is resumed.
    pub checkpoint: Option<Checkpoint>,
    /// `(field, saved value, new value)`.
    pub changes: Vec<(String, serde_json::Value, serde_json::Value)>,
}

impl RunDir {
    /// Opens (creating if needed) a run directory to train in, taking its lock.
    pub fn create(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            _lock: Some(RunLock::acquire(path)?),
        })
    }

    /// A run directory to read (export, eval), without the lock.
    pub fn open(path: &Path) -> RunDir {
        RunDir {
            path: path.to_path_buf(),
            _lock: None,
        }
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

    /// Looks at the run described by `config`: a fresh directory, or one with a checkpoint
    /// whose saved config differs from `config` at most in [`RESUMABLE_FIELDS`]. Writes
    /// nothing: call [`RunDir::accept`] once the checkpoint has loaded.
    pub fn start<C: Serialize + for<'de> Deserialize<'de>>(&self, config: &C) -> Result<Started> {
        let checkpoint = self.load_checkpoint()?;
        let mut changes = Vec::new();
        if checkpoint.is_some() {
            let saved: serde_json::Value = self.load_config()?;
            let new = serde_json::to_value(config)?;
            let (Some(saved_map), Some(new_map)) = (saved.as_object(), new.as_object()) else {
                bail!("{}: config.json is not a JSON object", self.path.display());
            };
            let mut fixed = Vec::new();
            let keys: std::collections::BTreeSet<&String> =
                saved_map.keys().chain(new_map.keys()).collect();
            for key in keys {
                let (a, b) = (saved_map.get(key), new_map.get(key));
                if a == b {
                    continue;
                }
                if RESUMABLE_FIELDS.contains(&key.as_str()) {
                    changes.push((
                        key.clone(),
                        a.cloned().unwrap_or_default(),
                        b.cloned().unwrap_or_default(),
                    ));
                } else {
                    fixed.push(format!(
                        "{key} ({} -> {})",
                        a.map_or("absent".into(), |v| v.to_string()),
                        b.map_or("absent".into(), |v| v.to_string())
                    ));
                }
            }
            if !fixed.is_empty() {
                bail!(
                    "{} holds a run with another config ({}); use a new --run directory or the \
                     same flags (only {} may change on resume)",
                    self.path.display(),
                    fixed.join(", "),
                    RESUMABLE_FIELDS.join(", ")
                );
            }
        }
        Ok(Started {
            checkpoint,
            changes,
        })
    }

    /// Commits to the run started with [`RunDir::start`], once its checkpoint loaded: saves
    /// `config`, cuts the log back to the checkpoint's step (later lines would be repeated)
    /// and logs what a resume changed.
    pub fn accept<C: Serialize>(&self, config: &C, started: &Started) -> Result<()> {
        let step = started.checkpoint.as_ref().map_or(0, |c| c.step);
        if started.checkpoint.is_none() || !started.changes.is_empty() {
            self.save_config(config)?;
        }
        self.truncate_log(step)?;
        if !started.changes.is_empty() {
            let changed: serde_json::Map<String, serde_json::Value> = started
                .changes
                .iter()
                .map(|(k, a, b)| (k.clone(), serde_json::json!({"from": a, "to": b})))
                .collect();
            self.log(&serde_json::json!({"event": "resume", "step": step, "changed": changed}))?;
        }
        Ok(())
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
        let path = self.config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} is not a run directory (no config.json)",
                self.path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged (not the config of a fewstep run); restore it or use a new --run \
                 directory",
                path.display()
            )
        })
    }

    /// Saves a checkpoint atomically.
    pub fn save_checkpoint(&self, ck: &Checkpoint) -> Result<()> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        let mut body = postcard::to_allocvec(ck)?;
        body.extend_from_slice(&postcard::to_allocvec(&ck.resume)?);
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
        let malformed = || format!("{} is malformed", path.display());
        let (mut ck, rest): (Checkpoint, &[u8]) =
            postcard::take_from_bytes(&bytes[12..]).with_context(malformed)?;
        // Checkpoints written before `resume` existed end here.
        if !rest.is_empty() {
            ck.resume = postcard::from_bytes(rest).with_context(malformed)?;
        }
        Ok(Some(ck))
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
                    .is_some_and(|s| s < step || (s == step && l.contains("\"event\"")))
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
