//! berthd's config file parser: arbitrary TOML never panics, and a config that parses
//! and validates serialises to TOML that parses to the same config.
#![no_main]

use berth_server::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text) {
        let printed = toml::to_string(&config).expect("a parsed config serialises");
        let again = Config::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} serialised as {printed:?} which fails: {e}"));
        assert_eq!(config, again);
    }
});
