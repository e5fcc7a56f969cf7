"""The control plane: the control socket (server and client), lbctl, metrics and the status
document they share."""
