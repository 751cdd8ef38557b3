"""EDK II source trees: DSC/INF reading, patch planning, patch series, verification builds."""
