//! `sampler-cli`: turns a fewstep bundle into PNG images on this machine's CPU.
//!
//! Exit codes: 0 on success, 2 on any error (bad flags, unreadable or corrupted bundle,
//! label out of range, unwritable output). Output files are written to a temporary file
//! beside the target and renamed into place, so a failure never leaves half a PNG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::ProgressBar;
use sampler_core::bundle::{Bundle, ModelSpec};
use sampler_core::micro::{Activations, MicroSampler};
use sampler_core::model::NetConfig;
use sampler_core::sampler::Pixels;
use sampler_core::{Images, Sampler};

/// Generate images from a fewstep bundle (weights + learned noise levels) with the
/// few-step Euler sampler.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// The bundle to sample from (e.g. bundles/face8.bin).
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,

    /// Number of images to generate.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,

    /// Seed of the initial noise; the same seed gives the same images on every target.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Class label for conditional bundles (default: labels cycle 0, 1, 2, ...).
    #[arg(long, value_name = "K")]
    label: Option<u32>,

    /// Write all images as one PNG grid to this file (`-`: standard output, for pipes). An
    /// existing regular file is replaced; directories, devices, FIFOs, sockets and symbolic
    /// links are refused (links are never followed).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "out_dir",
        default_value = "samples.png"
    )]
    out: PathBuf,

    /// Write one PNG per image (000000.png, 000001.png, ...) into this directory instead.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,

    /// Images per batch (memory grows with it).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,

    /// Refuse to sample when the bundle would need more memory than this at the chosen batch
    /// size (estimated from its config before anything is loaded): bytes, or a number with
    /// K, M or G (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = sampler_core::fs::parse_size)]
    max_memory: u64,

    /// Upscale every image this many times (nearest neighbour) in the grid and in
    /// --out-dir PNGs: a 24x24 face at --scale 4 is 96x96.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    scale: u32,

    /// Black pixels between and around the grid's tiles (after scaling).
    #[arg(long, value_name = "PIXELS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=256))]
    gap: u32,

    /// Sample with this solver instead of the bundle's: euler, heun (2T - 1 evaluations),
    /// dpmpp2m, ipndm or dpmpp2m-lof (DPM-Solver++(2M) with a first-order step into the
    /// smallest level).
    #[arg(long, value_name = "SOLVER")]
    solver: Option<sampler_core::bundle::SolverKind>,

    /// Sample over these levels instead of the bundle's: `bundle`, `edm` (EDM's rho = 7
    /// schedule with the bundle's T, s_min and s_max) or a FILE (another bundle, or a text
    /// file of decreasing levels).
    #[arg(long, value_name = "bundle|edm|FILE")]
    levels: Option<String>,

    /// What runs the network: `burn` (burn's CPU backend, images in batches on every core)
    /// or `micro` (the microcontroller runtime on this CPU, one image per core: the
    /// firmware's arithmetic and images, bit for bit; needs a bundle converted with
    /// `trainer export --bundle B --weights f32|f16|int8`).
    #[arg(long, value_enum, default_value_t = Engine::Burn)]
    engine: Engine,

    /// With --engine micro: how activations are stored, `f32`, `f16`, `int8` (the integer
    /// path, for int8 weights) or `int-f32` (the integer path on f32 rows: fastest for small
    /// networks). Default: f32 for f32 weights, f16 for f16; for int8, int-f32 when its arena
    /// is at most 32 KiB, else int8.
    #[arg(long, value_name = "f32|f16|int8|int-f32")]
    activations: Option<Activations>,

    /// Print the bundle's metadata and its T noise levels, then exit.
    #[arg(long)]
    info: bool,

    /// With --info: print it as one JSON object (for scripts) instead of text.
    #[arg(long, requires = "info")]
    json: bool,

    /// Time the sampler instead of writing images: `--count` images (after one warm-up
    /// batch) at each of these batch sizes, printed as a table of images/s.
    #[arg(long, value_name = "BATCHES", value_delimiter = ',', num_args = 0.., default_missing_value = "1,16",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    bench: Option<Vec<u32>>,
}

/// `--engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Burn,
    Micro,
}

#[global_allocator]
static GLOBAL: fewstep_host::Allocator = fewstep_host::Allocator;

fn main() -> ExitCode {
    fewstep_host::init();
    match fewstep_host::parse::<Args>() {
        Ok(args) => fewstep_host::exit(run(&args)),
        Err(code) => code,
    }
}

fn run(args: &Args) -> Result<()> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read bundle {}", args.bundle.display()))?;
    let mut bundle =
        Bundle::from_bytes(&bytes).with_context(|| format!("{}", args.bundle.display()))?;
    let recorded = (bundle.solver, bundle.schedule.clone());
    if let Some(kind) = args.solver {
        bundle.solver = kind;
    }
    if let Some(levels) = &args.levels {
        bundle.schedule = override_levels(&bundle, levels)?;
    }
    if args.info {
        let version = Bundle::version_of(&bytes)?;
        return emit(&if args.json {
            let mut j = info_json(&bundle, version);
            j["recorded_solver"] = recorded.0.name().into();
            j["recorded_sigmas"] = serde_json::to_value(recorded.1.sigmas())?;
            let mut j = serde_json::to_string_pretty(&j)?;
            j.push('\n');
            j
        } else {
            let mut text = info_text(&bundle, version);
            if recorded.0 != bundle.solver || recorded.1 != bundle.schedule {
                use std::fmt::Write;
                let levels: Vec<String> = recorded
                    .1
                    .sigmas()
                    .iter()
                    .map(|s| format!("{s:.6}"))
                    .collect();
                let _ = writeln!(
                    text,
                    "overridden:  the bundle records solver {} and sigmas {}",
                    recorded.0.name(),
                    levels.join(" ")
                );
            }
            text
        });
    }
    if args.activations.is_some() && args.engine != Engine::Micro {
        anyhow::bail!("--activations applies to --engine micro (burn computes in f32)");
    }
    let generator = match args.engine {
        Engine::Burn => {
            let largest_batch = match &args.bench {
                Some(batches) => batches.iter().copied().max().unwrap_or(1) as usize,
                None => args.batch.min(args.count) as usize,
            };
            check_memory(&bundle, largest_batch, args.max_memory)?;
            let device = sampler_core::burn::tensor::Device::flex();
            let sampler = Sampler::with_memory_limit(bundle, &device, args.max_memory)
                .with_context(|| format!("{}", args.bundle.display()))?;
            Generator::Burn(Box::new(sampler))
        }
        Engine::Micro => {
            let mut micro = MicroSampler::new(&bytes)
                .with_context(|| format!("{} (--engine micro)", args.bundle.display()))?;
            micro.set_sampling(bundle.solver, bundle.schedule.clone());
            let act = args.activations.unwrap_or(micro.default_activations());
            Generator::Micro(Box::new(micro), act)
        }
    };
    if let Some(batches) = &args.bench {
        return emit(&bench(&generator, args, batches)?);
    }

    let start = Instant::now();
    let count = args.count as usize;
    let batch = args.batch as usize;
    let progress = progress_bar(count);
    let mut images: Option<Images> = None;
    let mut first = 0usize;
    while first < count {
        let n = batch.min(count - first);
        let part = generator.generate(args.seed, first as u64, n, args.label, &progress)?;
        images = Some(match images {
            None => part,
            Some(mut all) => {
                all.data.extend_from_slice(&part.data);
                all.count += part.count;
                all
            }
        });
        first += n;
        progress.set_position(first as u64);
    }
    progress.finish_and_clear();
    let images = images.context("no images were generated")?;
    let elapsed = start.elapsed().as_secs_f64();

    let target = match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output directory {}", dir.display()))?;
            for k in 0..images.count {
                let px = images.pixels(k).scaled(args.scale);
                write_png(&dir.join(format!("{k:06}.png")), &px)?;
            }
            dir.display().to_string()
        }
        None if args.out.as_os_str() == "-" => {
            let png = sampler_core::fs::encode_png(&grid(&images, args))
                .context("cannot encode the PNG")?;
            // Unlike text, a cut-off image is a lost result: a closed pipe is an error.
            write_stdout(&png).context("cannot write the PNG to standard output")?;
            "standard output".to_string()
        }
        None => {
            write_png(&args.out, &grid(&images, args))?;
            args.out.display().to_string()
        }
    };
    // With the image on stdout, the summary goes to stderr.
    let to_stdout = args.out_dir.is_some() || args.out.as_os_str() != "-";
    let summary = format!(
        "wrote {} images to {} in {:.2} s ({:.1} images/s, T = {})\n",
        images.count,
        target,
        elapsed,
        images.count as f64 / elapsed.max(1e-9),
        generator.bundle().schedule.len()
    );
    if to_stdout {
        emit(&summary)
    } else {
        eprint!("{summary}");
        Ok(())
    }
}

/// The levels `--levels` asks for.
fn override_levels(bundle: &Bundle, spec: &str) -> Result<sampler_core::Schedule> {
    use sampler_core::Schedule;
    let s = &bundle.schedule;
    match spec {
        "bundle" => Ok(s.clone()),
        "edm" => Ok(Schedule::edm(s.len(), s.s_min() as f64, s.s_max() as f64)?),
        path => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read --levels {path}"))?;
            if bytes.starts_with(&sampler_core::bundle::MAGIC) {
                let other = Bundle::from_bytes(&bytes).with_context(|| path.to_string())?;
                return Ok(other.schedule);
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("--levels {path}: neither a bundle nor text"))?;
            let levels = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .map(|t| {
                    // Escaped: a control byte in the file must not reach the terminal raw.
                    t.parse::<f32>().map_err(|_| {
                        anyhow::anyhow!("--levels {path}: '{}' is not a number", t.escape_debug())
                    })
                })
                .collect::<Result<Vec<f32>>>()?;
            let top = levels.iter().copied().fold(0.0f32, f32::max);
            if top > sampler_core::bundle::MAX_SIGMA {
                // Checked here so the message names the levels file, not the bundle.
                anyhow::bail!(
                    "--levels {path}: the largest level is {top:e}; fewstep samples levels up \
                     to {:e}",
                    sampler_core::bundle::MAX_SIGMA
                );
            }
            Schedule::new(levels).with_context(|| format!("--levels {path}"))
        }
    }
}

/// The grid PNG of `--out`, with `--scale` and `--gap`.
fn grid(images: &Images, args: &Args) -> Pixels {
    images.grid_spaced(None, args.scale as usize, args.gap as usize)
}

/// The engine `--engine` chose, ready to sample.
enum Generator<'a> {
    // Boxed: both engines are a kilobyte or more, and only one exists.
    Burn(Box<Sampler>),
    Micro(Box<MicroSampler<'a>>, Activations),
}

impl Generator<'_> {
    fn bundle(&self) -> &Bundle {
        match self {
            Generator::Burn(s) => s.bundle(),
            Generator::Micro(m, _) => m.bundle(),
        }
    }

    /// Images `first .. first + count` of run `seed`: burn in one batch, the micro runtime
    /// one image per core (advancing `progress` as each finishes).
    fn generate(
        &self,
        seed: u64,
        first: u64,
        count: usize,
        label: Option<u32>,
        progress: &ProgressBar,
    ) -> Result<Images> {
        match self {
            Generator::Burn(s) => Ok(s.generate_range(seed, first, count, label, |_| {})?),
            Generator::Micro(m, act) => micro_images(m, *act, seed, first, count, label, progress),
        }
    }
}

/// `--engine micro`: images `first .. first + count`, each in its own arena, spread over
/// the cores (the images do not depend on which core made them).
fn micro_images(
    m: &MicroSampler<'_>,
    act: Activations,
    seed: u64,
    first: u64,
    count: usize,
    label: Option<u32>,
    progress: &ProgressBar,
) -> Result<Images> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let shape = m.bundle().image;
    let d = shape.values();
    let mut data = vec![0f32; count * d];
    let next = AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<&mut [f32]>> = data
        .chunks_mut(d.max(1))
        .map(std::sync::Mutex::new)
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1));
    let words = m.arena_words(act);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut arena = vec![0u32; words];
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= count {
                            return Ok(());
                        }
                        let mut out = slots[k]
                            .lock()
                            .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
                        m.generate(seed, first + k as u64, label, act, &mut arena, &mut out)
                            .with_context(|| format!("image {}", first + k as u64))?;
                        progress.inc(1);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a sampling thread panicked"))??;
        }
        Ok(())
    })?;
    drop(slots);
    Ok(Images { shape, count, data })
}

/// `--bench`: images/s at each batch size, from the same seeds as a normal run.
fn bench(generator: &Generator<'_>, args: &Args, batches: &[u32]) -> Result<String> {
    use std::fmt::Write;
    let b = generator.bundle();
    let count = args.count as usize;
    let hidden = ProgressBar::hidden();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} x {} x {}, T = {}, {} images per row, {} cores, engine {}",
        b.name,
        b.image.channels,
        b.image.height,
        b.image.width,
        b.schedule.len(),
        count,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        match generator {
            Generator::Burn(_) => "burn".to_string(),
            Generator::Micro(_, act) => format!("micro ({} activations)", act.name()),
        }
    );
    let _ = writeln!(s, "| batch | images/s | ms/image | ms/step of a batch |");
    let _ = writeln!(s, "| ---: | ---: | ---: | ---: |");
    for &batch in batches {
        let batch = batch as usize;
        // One warm-up batch: first-touch allocations and thread start-up are not the rate.
        generator.generate(args.seed, 0, batch.min(count), args.label, &hidden)?;
        let start = Instant::now();
        let mut first = 0;
        while first < count {
            let n = batch.min(count - first);
            generator.generate(args.seed, first as u64, n, args.label, &hidden)?;
            first += n;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let batches_run = count.div_ceil(batch);
        let _ = writeln!(
            s,
            "| {batch} | {:.1} | {:.3} | {:.3} |",
            count as f64 / secs,
            1e3 * secs / count as f64,
            1e3 * secs / (batches_run * b.schedule.len()) as f64
        );
    }
    Ok(s)
}

/// `--max-memory`: refuses before loading when `batch` images would need more than `limit`,
/// saying which batch size would fit.
fn check_memory(bundle: &Bundle, batch: usize, limit: u64) -> Result<()> {
    let need = bundle.memory_bytes(batch);
    if need <= limit {
        return Ok(());
    }
    let fits = (1..batch).rev().find(|&b| bundle.memory_bytes(b) <= limit);
    let advice = match fits {
        Some(b) => format!("use --batch {b} or less, or raise --max-memory"),
        None => "even one image does not fit: raise --max-memory if this machine has it".into(),
    };
    anyhow::bail!(
        "this bundle needs about {} at batch {batch}, more than --max-memory {}; {advice}",
        sampler_core::fs::human_size(need),
        sampler_core::fs::human_size(limit)
    )
}

fn progress_bar(count: usize) -> ProgressBar {
    fewstep_host::progress(
        count as u64,
        "{bar:40} {pos}/{len} images {per_sec} eta {eta}",
        count <= 16,
    )
}

/// How a network's weights are stored: `burnpack f32` (version 1) or `pack f32|f16|int8`
/// (version 2), or which of the two is malformed. The format follows from the bundle's
/// version, not from the bytes: a pack whose magic is corrupted is a malformed pack.
fn weights_format(weights: &[u8], version: u16) -> String {
    if version == 1 {
        // burn's record bytes, checked only when burn loads them.
        return "burnpack f32".into();
    }
    if weights.starts_with(&sampler_core::pack::PACK_MAGIC) {
        match sampler_core::pack::PackView::parse(weights) {
            Ok(p) => {
                let dtype = p
                    .tensors()
                    .iter()
                    .find(|t| t.shape().len() > 1)
                    .map_or("f32", |t| t.dtype.name());
                format!("pack {dtype}")
            }
            Err(_) => "pack (malformed)".into(),
        }
    } else {
        "pack (malformed)".into()
    }
}

/// What `--info --json` prints: the same facts as [`info_text`], with the network config.
fn info_json(b: &Bundle, version: u16) -> serde_json::Value {
    use serde_json::json;
    let model = match &b.model {
        ModelSpec::Network { config, weights } => json!({
            "kind": match config { NetConfig::UNet(_) => "unet", NetConfig::Mlp(_) => "mlp" },
            "config": config,
            "weights_bytes": weights.len(),
            "weights_format": weights_format(weights, version),
            "macs_per_evaluation": config.macs_per_evaluation(),
            "macs_per_image": b.macs_per_image(),
        }),
        ModelSpec::Mixture(m) => json!({
            "kind": "mixture",
            "components": m.components(),
            "dim": m.dim,
        }),
    };
    json!({
        "name": b.name,
        "description": b.description,
        "format_version": version,
        "image": { "channels": b.image.channels, "height": b.image.height, "width": b.image.width },
        "labels": b.label_count,
        "precond": b.precond,
        "solver": b.solver.name(),
        "model": model,
        "dataset": b.provenance.dataset,
        "training_steps": b.provenance.training_steps,
        "schedule_method": b.provenance.schedule_method,
        "created_unix": b.provenance.created_unix,
        "T": b.schedule.len(),
        "sigmas": b.schedule.sigmas(),
        "lambdas": b.schedule.lambda_weights(),
    })
}

/// What `--info` prints.
fn info_text(b: &Bundle, version: u16) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "name:        {}", b.name);
    let _ = writeln!(s, "format:      version {version}");
    if !b.description.is_empty() {
        let _ = writeln!(s, "description: {}", b.description);
    }
    let _ = writeln!(
        s,
        "image:       {} x {} x {} (C x H x W)",
        b.image.channels, b.image.height, b.image.width
    );
    let _ = writeln!(
        s,
        "labels:      {}",
        if b.label_count == 0 {
            "unconditional".to_string()
        } else {
            b.label_count.to_string()
        }
    );
    let _ = writeln!(s, "precond:     {:?}", b.precond);
    let _ = writeln!(
        s,
        "solver:      {} ({} evaluations)",
        b.solver.name(),
        b.solver.nfe(b.schedule.len())
    );
    match &b.model {
        ModelSpec::Network { config, weights } => {
            let kind = match config {
                NetConfig::UNet(_) => "U-Net (DDPM++)",
                NetConfig::Mlp(_) => "MLP",
            };
            let _ = writeln!(
                s,
                "model:       {kind}, {} bytes of weights ({})",
                weights.len(),
                weights_format(weights, version)
            );
            let _ = writeln!(
                s,
                "compute:     {} MACs per evaluation, {} per image",
                config.macs_per_evaluation(),
                b.macs_per_image().unwrap_or(0)
            );
        }
        ModelSpec::Mixture(m) => {
            let _ = writeln!(
                s,
                "model:       Gaussian mixture, {} components in {} dimensions",
                m.components(),
                m.dim
            );
        }
    }
    let p = &b.provenance;
    let _ = writeln!(s, "dataset:     {}", p.dataset);
    let _ = writeln!(
        s,
        "training:    {} steps; schedule: {}",
        p.training_steps, p.schedule_method
    );
    let levels: Vec<String> = b
        .schedule
        .sigmas()
        .iter()
        .map(|s| format!("{s:.6}"))
        .collect();
    let _ = writeln!(s, "T:           {}", b.schedule.len());
    let _ = writeln!(s, "sigmas:      {}", levels.join(" "));
    let lambdas: Vec<String> = b
        .schedule
        .lambda_weights()
        .iter()
        .map(|l| format!("{l:.6}"))
        .collect();
    let _ = writeln!(s, "lambdas:     {}", lambdas.join(" "));
    s
}

/// Writes `text` to stdout; a closed pipe (`--info | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    emit_bytes(text.as_bytes())
}

/// Writes text to stdout; a closed pipe is not an error (the reader took what it wanted).
fn emit_bytes(bytes: &[u8]) -> Result<()> {
    match write_stdout(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to stdout and flushes; every failure, a closed pipe included, is returned.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())
}

/// Encodes a PNG and moves it into place atomically.
fn write_png(path: &Path, px: &Pixels) -> Result<()> {
    sampler_core::fs::write_png(path, px)
        .with_context(|| format!("cannot write {}", path.display()))
}
