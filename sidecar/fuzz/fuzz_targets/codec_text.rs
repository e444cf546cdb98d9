#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pg_realtime_sidecar_fuzz::codec::text(data));
