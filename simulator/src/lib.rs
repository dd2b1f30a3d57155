//! The plant simulator: a Modbus TCP server that serves device profiles with plant physics.
//!
//! The server, the scenario format and the physics arrive with the poller work; this crate
//! already shares the profile codec, so the simulator and the gateway can never disagree on how
//! a value is laid out in registers.
