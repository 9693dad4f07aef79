"""Network blocks shared by every policy method: vision encoders and the temporal U-Net."""
