"""Where endpoints and config come from past one machine: DNS and etcd."""
