"""The operator's side of the fleet: `desanet fleet` (keys, signed commands)."""
