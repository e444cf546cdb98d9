//! The fuzz properties on stable Rust, for `cargo test`: every committed input (libFuzzer seeds
//! and the inputs of past findings, `regressions/<target>/`) still passes its target's check,
//! and a deterministic batch of pseudo-random inputs does too.

use std::path::Path;

use pg_realtime_sidecar_fuzz::TARGETS;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn committed_inputs_pass() {
    let mut replayed = 0;
    for (name, check) in TARGETS {
        for dir in ["seeds", "regressions"] {
            let Ok(files) = std::fs::read_dir(Path::new(ROOT).join(dir).join(name)) else {
                continue;
            };
            for file in files {
                let path = file.expect("directory entry").path();
                let data = std::fs::read(&path).expect("input file");
                eprintln!("{name}: {}", path.display());
                check(&data);
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "no committed inputs found under {ROOT}");
}

/// xorshift64*: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::try_from(self.next() % (max as u64 + 1)).expect("small");
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn pseudo_random_inputs_pass() {
    for (name, check) in TARGETS {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        // Public-key signing is slow in unoptimized test builds.
        let runs = if name.starts_with("jw") { 200 } else { 2000 };
        for _ in 0..runs {
            check(&rng.bytes(600));
        }
    }
}
