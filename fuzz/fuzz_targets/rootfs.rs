//! cargo-fuzz target `rootfs`: see `alcove_fuzz::rootfs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        alcove_fuzz::ignore_sigpipe();
        (alcove_fuzz::target("rootfs").expect("a registered target").prepare)();
    },
    |data: &[u8]| alcove_fuzz::rootfs::fuzz(data)
);
