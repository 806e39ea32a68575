"""`--mix`: a mixed-domain run over registered envs."""
