"""Transfer learning: pretrained backbones read without their frameworks (work in progress, issue 15)."""
