//! PathInfo validation on arbitrary protobuf bytes: an error, or a PathInfo
//! whose wire form validates back to the same value and whose fingerprint
//! and narinfo can be made.
#![no_main]

use lazix_castore::PathInfo;
use lazix_proto::store as spb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = spb::PathInfo::decode(data) else {
        return;
    };
    let Ok(info) = PathInfo::try_from_proto(&p) else {
        return;
    };
    let again = PathInfo::try_from_proto(&info.to_proto()).expect("round trip");
    assert_eq!(again.fingerprint(), info.fingerprint());
    let _ = info.to_narinfo("nar/x.nar".into(), "none").render();
});
