//! fewstep on a Cortex-M4: decode the embedded bundle, generate one image with the
//! bundle's T levels for a fixed seed, print it as an ASCII PGM/PPM over semihosting with
//! checksums and the heap high-water mark, and exit 0 (or print the error and exit 1).
//!
//! Output lines, which the host check (`tests/tests/firmware_qemu.rs`) parses:
//! `noise_crc32 0x...` (CRC-32 of the initial noise's f32 bits, little-endian),
//! the image (`P2`/`P3` header, one row per line), `image_crc32 0x...` (of the u8 pixels),
//! `heap_high_water N` and `stack_high_water N` (bytes) and `done`.
//!
//! memory.x gives the program 256 KiB of RAM (the board has 4 MiB): the heap below, the
//! stack above it, which is painted at boot so its deepest use can be measured.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprint, hprintln};
use embedded_alloc::LlffHeap;
use sampler_core::Sampler;
use sampler_core::burn::tensor::Device;

/// Seed of the image; the host check uses the same.
const SEED: u64 = 0;
/// Heap for tensors and the decoded bundle; the rest of the 256 KiB is the stack (and a few
/// bytes of statics).
const HEAP_SIZE: usize = 228 * 1024;
/// What an untouched stack word holds.
const PAINT: u32 = 0x5AC3_5AC3;

unsafe extern "C" {
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

static BUNDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bundle.bin"));

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

#[entry]
fn main() -> ! {
    paint_stack();
    {
        static mut HEAP_MEM: [core::mem::MaybeUninit<u8>; HEAP_SIZE] =
            [core::mem::MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: called once, before any allocation; HEAP_MEM is used by nothing else.
        unsafe { HEAP.heap.init(&raw mut HEAP_MEM as usize, HEAP_SIZE) }
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
    let device = Device::flex();
    let sampler = Sampler::from_bundle(BUNDLE, &device)?;
    let shape = sampler.bundle().image;
    hprintln!(
        "bundle {} T={} seed {}",
        sampler.bundle().name,
        sampler.bundle().schedule.len(),
        SEED
    );

    let noise = sampler.initial_noise(SEED, 0, 1);
    let mut crc = crc32fast::Hasher::new();
    for v in &noise {
        crc.update(&v.to_bits().to_le_bytes());
    }
    hprintln!("noise_crc32 {:#010x}", crc.finalize());
    drop(noise);

    let pixels = sampler.generate(SEED, 1, None)?.to_u8();

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
    hprint!("heap_high_water {}\n", HEAP.peak.load(Ordering::Relaxed));
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
