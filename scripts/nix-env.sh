# Sourced by the scripts: settings for real Nix without network, sandbox or
# build users (as root, no daemon).
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nsandbox = false\nbuild-users-group ='
