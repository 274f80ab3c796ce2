#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| astro_fuzz::data(data));
