"""kind clusters with real pods: images, the offline node image, the cluster and its tests."""
