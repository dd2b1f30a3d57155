//! The MQTT publisher (being written).
