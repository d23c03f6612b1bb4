//! End-to-end tests across fewstep's crates live in `tests/`; this library is empty.
