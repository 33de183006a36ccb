//! UDP and TCP on io_uring.
