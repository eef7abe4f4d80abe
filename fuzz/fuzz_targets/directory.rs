//! Directory validation on arbitrary protobuf bytes: an error, or a
//! directory whose canonical encoding validates again and whose tree checks
//! (as a closure of one) within the limits without panicking.
#![no_main]

use lazix_castore::directory::{check_tree, validate_closure, Directory};
use lazix_castore::Node;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = Directory::decode(data) else {
        return;
    };
    let again = Directory::decode(&dir.encode()).expect("a canonical encoding validates");
    assert_eq!(again.digest(), dir.digest());
    let root = Node::Directory {
        digest: dir.digest(),
        size: dir.size(),
    };
    let _ = check_tree(&root, std::slice::from_ref(&dir));
    let _ = validate_closure(vec![dir.clone()], |_| Ok(Some(0)));
    for (name, node) in dir.entries_sorted() {
        assert_eq!(dir.entry(&name), Some(node));
    }
});
