-- Demo data: customers with varied (and some empty) fields and three
-- campaigns. Every statement is idempotent, so running it again adds nothing.
INSERT INTO customers (phone, first_name, last_name, location, preferred_product) VALUES
    ('+254712000001', 'Alice',   'Wanjiru',  'Nairobi',  'Running Shoes'),
    ('+254712000002', 'Brian',   'Otieno',   'Mombasa',  'Smart Watch'),
    ('+254712000003', 'Chloé',   'Dubois',   'Nairobi',  'Yoga Mat'),
    ('+254712000004', 'David',   '',         'Kisumu',   'Running Shoes'),
    ('+254712000005', 'Esther',  'Njeri',    '',         'Headphones'),
    ('+254712000006', '',        'Kamau',    'Nakuru',   ''),
    ('+14155550107',  'Farid',   'Haddad',   'San Francisco', 'Smart Watch'),
    ('+14155550108',  'Grace',   'Lee',      'San Francisco', 'Running Shoes'),
    ('+447700900109', 'Hannah',  'O''Brien', 'London',   'Yoga Mat'),
    ('+447700900110', 'Ivan',    'Petrov',   'London',   ''),
    ('+919876500111', 'Jaya',    'Iyer',     'Bengaluru', 'Headphones'),
    ('+5511987650112', 'Lucía',  'Gómez 🌟', 'São Paulo', 'Running Shoes')
ON CONFLICT (phone) DO NOTHING;

INSERT INTO campaigns (name, channel, status, base_template)
SELECT v.name, v.channel, 'draft', v.base_template
FROM (VALUES
    ('Summer Sale', 'sms', 'Hi {first_name}, check out {preferred_product} in {location}!'),
    ('WhatsApp Loyalty Thank-You', 'whatsapp', 'Hello {first_name} {last_name} 👋 thanks for being with us. Your favourite, {preferred_product}, is 20% off this week.'),
    ('Store Opening Nairobi', 'sms', 'Hi {first_name}! Our new {location} store opens Saturday. Reply STOP to opt out.')
) AS v (name, channel, base_template)
WHERE NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.name = v.name);
