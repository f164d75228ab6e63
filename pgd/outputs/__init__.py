"""What a run leaves behind: the model file, checkpoints and their lock, and the progress shown meanwhile.
"""
