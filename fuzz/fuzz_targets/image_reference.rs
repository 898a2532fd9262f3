//! Image references and digests from arbitrary strings: parsing never panics, and a
//! reference that parses prints as a string that parses back to the same reference.
#![no_main]

use berth_image::{Digest, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(reference) = Reference::parse(input) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?} which fails: {e}"));
        assert_eq!(reference, again, "{input:?} does not survive printing");
    }
    if let Ok(digest) = Digest::parse(input) {
        let printed = digest.to_string();
        assert_eq!(Digest::parse(&printed).ok(), Some(digest));
    }
});
