//! Estuary's bench: end-to-end comparisons with peer servers (nginx and others) on the same
//! machine, and an HTTP/3 client used both as a load generator and by the test suite.

pub mod h3client;
