"""The cluster: every-node listeners, runtime settings and flags, control commands, the node registry."""
