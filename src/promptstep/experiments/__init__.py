"""The paper's experiment algorithms: several contexts per update, controls, transfer."""
