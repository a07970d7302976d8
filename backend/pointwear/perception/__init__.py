"""Real footage in: `pointwear prepare` turns a video, an image folder or one photo into a subject
folder (frames, clothing masks, garment labels, an SMPL body per frame and the camera).

Stages, one module each (contracts in types.py, every tuning number in options.py):
    decode.py     video / images -> InputFrame stream (rotation, EXIF focal, alpha, downscale)
    pose.py       mediapipe pose: 33 landmarks, world landmarks and a person mask per person
    track.py      several people: one stable track, `--person auto|N`
    clothing.py   clothing mask = person minus skin, face and hair; upper / lower / one-piece labels
    body_fit.py   SMPLify-style batched fit of the body model and camera to the landmarks
    prepare.py    the pipeline, the subject writer call, prepare/ report and contact sheet
"""
