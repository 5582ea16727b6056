//! Cache admission and eviction policies: pure state machines, one file each. They decide
//! which objects stay in a tier; they never touch the bytes, a clock or a socket (the caller
//! passes `now` and carries out the evictions they return).

pub mod video;
