"""The self-driving car: one vehicle loop of small parts drives the simulator and the real RC car.

Where things live (a new part goes beside its kind)::

    vehicle.py   the one loop: parts with named inputs and outputs, run in order every tick
    parts.py     the parts both cars share: pilot, keyboard, recorder, video, duration
    safety.py    the one safety gate in front of every car link (StopReason says why the car is held)
    links.py     the CarLink protocol, the driving labels, the dry run and "no car" links
    pilot.py     a trained network and its preprocessing; preprocess.py the one preprocessing function
    augment.py   photometric augmentation for training (light, contrast, colour shifts, blur, noise)
    training.py  training a pilot (mlp | cnn) and the DAgger recipe; checking.py accuracy and contact sheet
    sim/         CarRacing-v3 (env.py), its looks (appearance.py), the scripted expert, the camera, runs
    hardware/    camera stream (protocol, server, client, cameras), the Arduino serial link, the window
    sessions/    recorded sessions: format, writer, reader, cleaning, importers (donkeycar, AutoRCCar)
    commands/    the ``scratchpilot car ...`` and ``demo`` handlers, nothing else
"""
