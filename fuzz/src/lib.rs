//! Shared pieces of the fuzz targets: the in-memory circuit and record
//! fixtures of `hopwire_proto::testkit`, and seed inputs the targets write
//! into their corpus at start-up.

use std::path::PathBuf;

pub use hopwire_proto::sync::lock;
pub use hopwire_proto::testkit::*;

/// XORs `mask` onto the start of `bytes`; true if anything changed.
pub fn xor(bytes: &mut [u8], mask: &[u8]) -> bool {
    let mut changed = false;
    for (b, m) in bytes.iter_mut().zip(mask) {
        *b ^= m;
        changed |= *m != 0;
    }
    changed
}

/// Writes `seeds` into the directory named by `HOPWIRE_FUZZ_SEEDS` (the
/// target's corpus; scripts/fuzz.sh sets it), so that libFuzzer starts from
/// well-formed inputs. Call it from the target's `init:`, which runs before
/// libFuzzer reads the corpus. Without the variable it does nothing.
pub fn write_seeds(seeds: impl IntoIterator<Item = Vec<u8>>) {
    let Some(dir) = std::env::var_os("HOPWIRE_FUZZ_SEEDS").map(PathBuf::from) else {
        return;
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("seeds: cannot create {}: {e}", dir.display());
        return;
    }
    for (i, seed) in seeds.into_iter().enumerate() {
        let path = dir.join(format!("seed-{i:03}"));
        if let Err(e) = std::fs::write(&path, seed) {
            eprintln!("seeds: cannot write {}: {e}", path.display());
        }
    }
}
