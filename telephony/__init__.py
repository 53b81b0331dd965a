"""Everything that knows Asterisk: the AMI codec and connection, the call tracker, the
PBX simulator. Pure core (codec, tracker) with a thin I/O shell (listener, simulator)."""
