//! proptest strategies shared by the tests that play a hostile relay: names that meet (drawn
//! from a small pool, now and then anything), timestamps and media references.

use estuary_common::chat::Media;
use proptest::prelude::*;

/// A name from `pool` four times in five (so entries meet the same user, group or room),
/// else any short string.
pub fn name(pool: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => prop::sample::select(pool).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// Up to four names of `pool`.
pub fn names(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(pool), 0..5)
}

/// A small timestamp, or any.
pub fn ts() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5_000, any::<u64>()]
}

/// Maybe a media reference.
pub fn media(pool: &'static [&'static str]) -> impl Strategy<Value = Option<Media>> {
    prop::option::of(
        (name(pool), name(pool), ts()).prop_map(|(url, mime, size)| Media { url, mime, size }),
    )
}
