"""Model definitions: networks only, no training or distribution logic."""
