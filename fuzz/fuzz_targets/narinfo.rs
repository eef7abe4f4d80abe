//! The narinfo parser: an error or a narinfo that renders and parses back
//! to itself.
#![no_main]

use lazix_castore::nix::narinfo::NarInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ni) = NarInfo::parse(text) {
        let again = NarInfo::parse(&ni.render()).expect("a rendered narinfo parses");
        assert_eq!(again.render(), ni.render());
    }
});
