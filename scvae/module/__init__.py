"""Pure-torch modules: they never see AnnData."""
