"""The world GLM: a small GLM-4V trained from scratch on crops of the sim world."""
