//! fewstep on a Cortex-M4 through `sampler_core::micro` (no burn): the embedded version-2
//! bundle's weights are read in place from flash, activations live in one static arena that
//! build.rs sized for the bundle. Generates one image with the bundle's T levels for a fixed
//! seed, prints it as an ASCII PGM/PPM over semihosting with checksums and memory figures,
//! and exits 0 (or prints the error and exits 1).
//!
//! Output lines, which the host check (`tests/tests/firmware_qemu.rs`) parses:
//! `noise_crc32 0x...` (CRC-32 of the initial noise's f32 bits, little-endian),
//! the image (`P2`/`P3` header, one row per line), `image_crc32 0x...` (of the u8 pixels),
//! `flash_bytes N`, `statics_bytes N` (.data + .bss: the arena, the heap reserve, the rest),
//! `arena_bytes N`, `heap_high_water N`, `stack_high_water N`,
//! `instructions_per_image N` (SysTick under qemu `-icount shift=0`, see [`ticks`]) and
//! `done`.
//!
//! memory.x gives the program 256 KiB of RAM (the board has 4 MiB); what a bundle needs is
//! the statics plus the stack high-water, which the host check holds to its budget.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprint, hprintln};
use embedded_alloc::LlffHeap;
use sampler_core::micro::{Activations, MicroSampler};
use sampler_core::sampler::to_u8;

include!(concat!(env!("OUT_DIR"), "/plan.rs"));

/// Seed of the image; the host check uses the same.
const SEED: u64 = 0;
/// Heap for the decoded bundle's metadata and the network's tensor table (~13 KB at the
/// peak, while the pack's table is parsed; the weights stay in flash and the activations
/// in [`ARENA`]). 14 KiB keeps mnist8's integer path within 128 KiB of RAM.
const HEAP_SIZE: usize = 14 * 1024;
/// What an untouched stack word holds.
const PAINT: u32 = 0x5AC3_5AC3;

unsafe extern "C" {
    /// Start of .data (cortex-m-rt's link.x): the first byte of the statics.
    static __sdata: u32;
    /// End of .data.
    static __edata: u32;
    /// Where .data's initial values are stored in flash, after the code and constants.
    static __sidata: u32;
    /// End of the statics (cortex-m-rt's link.x): the lowest address the stack may reach.
    static __sheap: u32;
    /// Top of the stack (cortex-m-rt's link.x).
    static _stack_start: u32;
}

fn stack_bounds() -> (usize, usize) {
    (
        &raw const __sheap as usize,
        &raw const _stack_start as usize,
    )
}

/// Fills the free stack below the current frame with [`PAINT`].
fn paint_stack() {
    let (bottom, _) = stack_bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = bottom;
    while p + 256 < sp {
        // SAFETY: [bottom, sp - 256) is unused stack: below every live frame, above statics.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// Deepest stack use so far, or `None` if the stack reached the statics.
fn stack_high_water() -> Option<usize> {
    let (bottom, top) = stack_bounds();
    let mut p = bottom;
    // SAFETY: reads of the stack region only.
    while p < top && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    (p > bottom).then_some(top - p)
}

/// The bundle in flash, 16-aligned so the weights pack's tensors are word-aligned.
#[repr(C, align(16))]
struct Aligned<B: ?Sized>(B);
static BUNDLE: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bundle.bin")));

/// The activation arena, exactly the size build.rs planned.
static mut ARENA: [u32; ARENA_WORDS] = [0; ARENA_WORDS];

/// The heap, counting its high-water mark.
struct Tracked {
    heap: LlffHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

unsafe impl GlobalAlloc for Tracked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            let now = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: Tracked = Tracked {
    heap: LlffHeap::empty(),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// SysTick wraps (every 2^24 ticks).
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick ticks since [`start_ticks`]: the core clock (25 MHz on mps2-an386). Under qemu's
/// `-icount shift=0` every instruction advances virtual time by 1 ns, so one tick is 40
/// instructions.
fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let cur = cortex_m::peripheral::SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return ((w as u64) << 24) + (0x00FF_FFFF - cur) as u64;
        }
    }
}

fn start_ticks(mut syst: cortex_m::peripheral::SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(0x00FF_FFFF);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[entry]
fn main() -> ! {
    paint_stack();
    {
        static mut HEAP_MEM: [core::mem::MaybeUninit<u8>; HEAP_SIZE] =
            [core::mem::MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: called once, before any allocation; HEAP_MEM is used by nothing else.
        unsafe { HEAP.heap.init(&raw mut HEAP_MEM as usize, HEAP_SIZE) }
    }
    if let Some(p) = cortex_m::Peripherals::take() {
        start_ticks(p.SYST);
    }
    match run() {
        Ok(()) => {
            hprintln!("done");
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(e) => {
            hprintln!("error: {}", e);
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}

fn run() -> Result<(), sampler_core::SamplerError> {
    let sampler = MicroSampler::new(&BUNDLE.0)?;
    let bundle = sampler.bundle();
    let shape = bundle.image;
    hprintln!(
        "bundle {} T={} seed {} weights {} ({} bytes in flash) activations {:?}",
        bundle.name,
        bundle.schedule.len(),
        SEED,
        sampler.weight_dtype().name(),
        sampler.weight_bytes(),
        ACTIVATIONS
    );

    let mut noise = alloc::vec![0.0f32; shape.values()];
    sampler.initial_noise(SEED, 0, &mut noise);
    let mut crc = crc32fast::Hasher::new();
    for v in &noise {
        crc.update(&v.to_bits().to_le_bytes());
    }
    hprintln!("noise_crc32 {:#010x}", crc.finalize());

    // The image reuses the noise buffer.
    let image = &mut noise;
    // SAFETY: the only reference to ARENA, taken once. (Through a raw pointer: edition 2024
    // refuses `&mut ARENA`.)
    #[allow(clippy::deref_addrof)]
    let arena = unsafe { &mut *(&raw mut ARENA) };
    let t0 = ticks();
    sampler.generate(SEED, 0, None, ACTIVATIONS, arena, image)?;
    let elapsed = ticks() - t0;
    let pixels: alloc::vec::Vec<u8> = image.iter().map(|&v| to_u8(v)).collect();

    // ASCII PGM (P2) or PPM (P3); channels-first values, interleaved per pixel for P3.
    let (c, h, w) = (
        shape.channels as usize,
        shape.height as usize,
        shape.width as usize,
    );
    hprintln!("{}\n{} {}\n255", if c == 3 { "P3" } else { "P2" }, w, h);
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            for ch in 0..c.min(3) {
                let _ = write!(line, "{} ", pixels[ch * h * w + y * w + x]);
            }
        }
        hprintln!("{}", line.trim_end());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&pixels);
    hprintln!("image_crc32 {:#010x}", crc.finalize());
    let statics = stack_bounds().0 - &raw const __sdata as usize;
    // Flash: vector table, code and constants (the bundle among them) up to .data's initial
    // values, then those (flash starts at 0 on mps2-an386).
    let data = &raw const __edata as usize - &raw const __sdata as usize;
    hprintln!("flash_bytes {}", &raw const __sidata as usize + data);
    hprintln!("statics_bytes {}", statics);
    hprintln!("arena_bytes {}", ARENA_WORDS * 4);
    hprint!("heap_high_water {}\n", HEAP.peak.load(Ordering::Relaxed));
    let instructions = elapsed * 40;
    hprintln!("instructions_per_image {}", instructions);
    if let Some(macs) = bundle.macs_per_image() {
        hprintln!("macs_per_image {}", macs);
        // Hundredths, as integers: the figures a reader compares with CMSIS-NN's.
        let per_mac = instructions * 100 / macs.max(1);
        hprintln!(
            "instructions_per_mac {}.{:02}",
            per_mac / 100,
            per_mac % 100
        );
        // At 168 MHz (an STM32F4), for 1.0 and 1.5 cycles per instruction.
        let ms = instructions / 168_000;
        hprintln!("ms_at_168mhz {} to {}", ms, ms * 3 / 2);
    }
    match stack_high_water() {
        Some(n) => hprintln!("stack_high_water {}", n),
        None => {
            hprintln!("error: the stack overflowed into the statics");
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    Ok(())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("error: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
