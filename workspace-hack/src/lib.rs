//! Empty on purpose: this crate only exists for its dependency features (see Cargo.toml),
//! the cargo-hakari "workspace hack" pattern, written by hand.
#![no_std]
